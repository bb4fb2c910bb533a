package images

import "os"

// The nginx image stands in for upstream's nginx:1.27/1.28-alpine: the same entrypoint script
// and command, port 80 serving a welcome page, logs on the container's stdout and stderr. The
// server is Debian's nginx over the shared userland, whose shell the entrypoint script needs.

const (
	// nginxConf runs the workers as root too, so that whatever a test mounts under the document
	// root is readable whoever owns it.
	nginxConf = `user root;
worker_processes 1;
pid /run/nginx.pid;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    error_log /var/log/nginx/error.log notice;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
`
	// nginxDefaultConf is the default server. The IPv6 listener comes from a file the entrypoint
	// writes only when the pod has IPv6: an unconditional [::]:80 would stop nginx in an
	// IPv4-only pod. The glob matches nothing otherwise, which nginx accepts.
	nginxDefaultConf = `server {
    listen 80;
    include /etc/nginx/listen-ipv6*.conf;
    server_name localhost;

    location / {
        root /usr/share/nginx/html;
        index index.html index.htm;
    }

    error_page 500 502 503 504 /50x.html;
    location = /50x.html {
        root /usr/share/nginx/html;
    }
}
`
	// nginxEntrypoint does what upstream's docker-entrypoint.sh does for a plain "nginx"
	// command — listen on IPv6 too when the kernel offers it — and then runs the command.
	nginxEntrypoint = `#!/bin/sh
set -e
if [ "$1" = nginx ] && [ -e /proc/net/if_inet6 ] && [ ! -e /etc/nginx/listen-ipv6.conf ]; then
    echo 'listen [::]:80;' > /etc/nginx/listen-ipv6.conf 2>/dev/null ||
        echo "$0: read-only /etc/nginx, listening on IPv4 only" >&2
fi
exec "$@"
`
	nginxIndex = `<!DOCTYPE html>
<html>
<head><title>Welcome to nginx!</title></head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and working.</p>
</body>
</html>
`
	nginx50x = `<!DOCTYPE html>
<html>
<head><title>Error</title></head>
<body>
<h1>An error occurred.</h1>
</body>
</html>
`
)

// nginxTree returns the nginx layer over base, the userland.
func nginxTree(base *tree) (*tree, error) {
	t := newTree("nginx", base)
	if err := t.addPrograms([]string{nginxFile.path}); err != nil {
		return nil, err
	}
	if err := t.copyFile("/etc/nginx/mime.types", mimeTypeFile.path); err != nil {
		return nil, err
	}
	files := []struct {
		path, data string
		mode       os.FileMode
	}{
		{"/etc/nginx/nginx.conf", nginxConf, 0o644},
		{"/etc/nginx/conf.d/default.conf", nginxDefaultConf, 0o644},
		{"/usr/share/nginx/html/index.html", nginxIndex, 0o644},
		{"/usr/share/nginx/html/50x.html", nginx50x, 0o644},
		{"/docker-entrypoint.sh", nginxEntrypoint, 0o755},
	}
	for _, f := range files {
		if err := t.file(f.path, []byte(f.data), f.mode); err != nil {
			return nil, err
		}
	}
	// The temporary-file directories compiled into Debian's nginx live in /var/lib/nginx, which
	// nginx does not create itself.
	for _, d := range []string{"/docker-entrypoint.d", "/var/lib/nginx", "/var/cache/nginx", "/var/log/nginx"} {
		if err := t.dir(d, 0o755); err != nil {
			return nil, err
		}
	}
	// Logs go to the container's own streams, as upstream links them.
	if err := t.symlink("/var/log/nginx/access.log", "/dev/stdout"); err != nil {
		return nil, err
	}
	if err := t.symlink("/var/log/nginx/error.log", "/dev/stderr"); err != nil {
		return nil, err
	}
	return t, nil
}
