package images

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
)

// This file describes the userland that agnhost, glibc-dns-testing and nginx share: the
// commands the upstream e2e suite runs in those containers (`kubectl exec ... -- /bin/sh -c`,
// curl, nc, dig, getent, cat /etc/resolv.conf, ...), taken from this machine's Debian packages.

// tool is a program of the userland.
type tool struct {
	name  string   // its file name in /usr/bin or /usr/sbin
	pkg   string   // the Debian package that installs it
	links []string // other names for it, as symlinks beside it
}

func pkgTools(pkg string, names ...string) []tool {
	ts := make([]tool, len(names))
	for i, n := range names {
		ts[i] = tool{name: n, pkg: pkg}
	}
	return ts
}

// userlandTools are the programs every userland image gets. Upstream agnhost is Alpine with
// bind-tools, curl, netcat-openbsd, iproute2, socat and bash; tests also use plain POSIX tools
// through the shell, so GNU coreutils comes whole rather than command by command.
var userlandTools = concat(
	[]tool{
		// dash, not bash, is /bin/sh: it is what Debian scripts and the tests' one-liners expect.
		{name: "dash", pkg: "dash", links: []string{"sh"}},
		{name: "bash", pkg: "bash"},
		{name: "mawk", pkg: "mawk", links: []string{"awk"}},
		// The OpenBSD netcat by its own name: the host's nc alternative may be another one.
		{name: "nc.openbsd", pkg: "netcat-openbsd", links: []string{"nc"}},
	},
	pkgTools("coreutils",
		"[", "arch", "base32", "base64", "basename", "cat", "chgrp", "chmod", "chown", "cksum",
		"comm", "cp", "csplit", "cut", "date", "dd", "df", "dirname", "du", "echo", "env",
		"expand", "expr", "factor", "false", "fmt", "fold", "groups", "head", "hostid", "id",
		"install", "join", "link", "ln", "logname", "ls", "md5sum", "mkdir", "mkfifo", "mknod",
		"mktemp", "mv", "nice", "nl", "nohup", "nproc", "numfmt", "od", "paste", "pathchk",
		"printenv", "printf", "pwd", "readlink", "realpath", "rm", "rmdir", "seq", "sha1sum",
		"sha224sum", "sha256sum", "sha384sum", "sha512sum", "shred", "shuf", "sleep", "sort",
		"split", "stat", "stty", "sum", "sync", "tac", "tail", "tee", "test", "timeout", "touch",
		"tr", "true", "truncate", "tsort", "tty", "uname", "unexpand", "uniq", "unlink", "wc",
		"whoami", "yes"),
	pkgTools("libc-bin", "getent"),
	pkgTools("dnsutils", "dig", "nslookup"),
	pkgTools("bind9-host", "host"),
	pkgTools("socat", "socat"),
	pkgTools("curl", "curl"),
	pkgTools("iproute2", "ip", "ss"),
	pkgTools("iputils-ping", "ping"),
	pkgTools("grep", "grep", "egrep", "fgrep"),
	pkgTools("sed", "sed"),
	pkgTools("hostname", "hostname"),
	pkgTools("procps", "ps", "kill", "pgrep", "pkill", "top", "free", "sysctl"),
	pkgTools("findutils", "find", "xargs"),
	// kubectl cp runs tar in the container.
	pkgTools("tar", "tar"),
	pkgTools("gzip", "gzip", "gunzip", "zcat"),
	pkgTools("mount", "mount", "umount"),
)

func concat[T any](parts ...[]T) []T {
	var out []T
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// binDirs are where lookTool finds programs. Debian has merged /bin into /usr/bin since
// bookworm, and the images share that layout (/bin -> usr/bin), so /usr is the only place
// programs come from and their links beside them land in real directories.
var binDirs = []string{"/usr/bin", "/usr/sbin"}

// lookTool returns the host path of the program name, or "" when it is not installed.
func lookTool(name string) string {
	for _, d := range binDirs {
		p := path.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// Host files the busybox and nginx images are made of, besides the userland's tools.
var (
	busyboxFile  = hostFile{path: "/usr/bin/busybox", pkg: "busybox-static"}
	nginxFile    = hostFile{path: "/usr/sbin/nginx", pkg: "nginx"}
	mimeTypeFile = hostFile{path: "/etc/nginx/mime.types", pkg: "nginx"}
)

// hostFile is a file Build copies from the host and the Debian package that installs it.
type hostFile struct{ path, pkg string }

// MissingPackages returns, sorted, the Debian packages that must be installed on this machine
// before Build can make the images: those whose programs Build copies but does not find. The
// Makefile's deps target installs them with apt-get (its DEB_PACKAGES list), so callers only
// report this list when it is not empty.
func MissingPackages() []string {
	missing := map[string]bool{}
	for _, t := range userlandTools {
		if lookTool(t.name) == "" {
			missing[t.pkg] = true
		}
	}
	for _, f := range []hostFile{busyboxFile, nginxFile, mimeTypeFile} {
		if _, err := os.Stat(f.path); err != nil {
			missing[f.pkg] = true
		}
	}
	pkgs := make([]string, 0, len(missing))
	for p := range missing {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return pkgs
}

// Users of the userland images. user-defined-in-image (1000) in group-defined-in-image (50000)
// is what upstream agnhost defines for the tests of supplemental groups taken from the image.
const (
	passwd = `root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh
`
	group = `root:x:0:
nobody:x:65534:
nogroup:x:65534:
user-defined-in-image:x:1000:
group-defined-in-image:x:50000:user-defined-in-image
`
	// nsswitch makes glibc read /etc/hosts, then ask DNS: what getent hosts and curl rely on.
	nsswitch = `passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
`
	// hosts is for a container started without the kubelet's own /etc/hosts (and for the
	// chroot test); pods get the kubelet's, mounted over it.
	hosts = `127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
`
)

// optionalEtc are host files the userland copies when the host has them: port and protocol
// names for nc, socat and getent (Debian's netbase).
var optionalEtc = []string{"/etc/services", "/etc/protocols"}

// skeleton adds the directories and /etc files every image with a shell has: root's home, /tmp
// writable by all with the sticky bit, the users and the name-service configuration.
func skeleton(t *tree) error {
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{"/root", 0o700}, {"/home", 0o755}, {"/tmp", 0o777 | os.ModeSticky},
		{"/var/tmp", 0o777 | os.ModeSticky}, {"/run", 0o755}, {"/proc", 0o555}, {"/sys", 0o555},
		{"/dev", 0o755},
	}
	for _, d := range dirs {
		if err := t.dir(d.path, d.mode); err != nil {
			return err
		}
	}
	files := []struct{ path, data string }{
		{"/etc/passwd", passwd}, {"/etc/group", group}, {"/etc/nsswitch.conf", nsswitch},
		{"/etc/hosts", hosts},
	}
	for _, f := range files {
		if err := t.file(f.path, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// userland returns the shared lower layer of agnhost, glibc-dns-testing and nginx: Debian's
// merged-/usr layout, the skeleton, and userlandTools with their libraries.
func userland() (*tree, error) {
	t := newTree("userland", nil)
	if err := skeleton(t); err != nil {
		return nil, err
	}
	// Debian's merged /usr: /bin/sh, /lib64/ld-linux-x86-64.so.2 and the rest resolve into /usr.
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := t.symlink("/"+l, "usr/"+l); err != nil {
			return nil, err
		}
	}
	var paths, missing []string
	for _, tl := range userlandTools {
		p := lookTool(tl.name)
		if p == "" {
			missing = append(missing, tl.name)
			continue
		}
		paths = append(paths, p)
		for _, l := range tl.links {
			if err := t.symlink(path.Join(path.Dir(p), l), tl.name); err != nil {
				return nil, err
			}
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("programs not installed: %s (Debian packages: %s)",
			strings.Join(missing, " "), strings.Join(MissingPackages(), " "))
	}
	if err := t.addPrograms(paths); err != nil {
		return nil, err
	}
	for _, p := range optionalEtc {
		if _, err := os.Stat(p); err == nil {
			if err := t.copyFile(p, p); err != nil {
				return nil, err
			}
		}
	}
	return t, nil
}
