package config

import (
	"bytes"
	"encoding"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// maxFileSize bounds the configuration file so a wrong path (a log, a disk image) fails fast.
const maxFileSize = 1 << 20

// Load reads the YAML file at path, fills defaults and validates every key.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(data)
}

// Parse decodes YAML (or JSON) configuration, fills defaults and validates it. Errors name the
// key, the value and what is allowed, on one line.
func Parse(data []byte) (*Config, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config: file is %d bytes, more than the %d allowed", len(data), maxFileSize)
	}
	// Strict: a key given twice (two cni: blocks) would otherwise silently drop the first one.
	raw, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		// yaml lists unmarshal errors on indented lines of their own; the contract is one line.
		return nil, fmt.Errorf("config: not valid YAML: %s", strings.Join(strings.Fields(err.Error()), " "))
	}
	var tree any
	if err := json.Unmarshal(raw, &tree); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if tree != nil {
		if err := checkTree("", tree, reflect.TypeFor[Config]()); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	cfg := &Config{}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if tree != nil {
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
	}
	if err := cfg.Default(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// checkTree walks the decoded document against the Config type so that an unknown key or a value
// of the wrong type is reported with its full path (cni.mtu, podCIDRs[1]) instead of the bare
// field name encoding/json would give.
func checkTree(path string, v any, t reflect.Type) error {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil {
		return nil
	}
	if reflect.PointerTo(t).Implements(textUnmarshaler) {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("%s: %s is not allowed (want a string)", path, show(v))
		}
		if err := reflect.New(t).Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			return fmt.Errorf("%s: %q is not allowed (want %s)", path, s, describe(t))
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %s is not allowed (want a mapping)", orTop(path), show(v))
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			fields[name] = t.Field(i).Type
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown key (allowed: %s)", join(path, k), allowedKeys(fields))
			}
			if err := checkTree(join(path, k), m[k], ft); err != nil {
				return err
			}
		}
	case reflect.Slice:
		items, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: %s is not allowed (want a list)", path, show(v))
		}
		for i, item := range items {
			// encoding/json leaves a null item at its zero value (an invalid netip.Prefix or Addr),
			// which the later checks would wave through as if it were a real entry.
			if item == nil {
				return fmt.Errorf("%s[%d]: null is not allowed (want %s)", path, i, describe(t.Elem()))
			}
			if err := checkTree(fmt.Sprintf("%s[%d]", path, i), item, t.Elem()); err != nil {
				return err
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: %s is not allowed (want a string)", path, show(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: %s is not allowed (want true or false)", path, show(v))
		}
	case reflect.Int:
		f, ok := v.(float64)
		if !ok || f != float64(int(f)) {
			return fmt.Errorf("%s: %s is not allowed (want a whole number)", path, show(v))
		}
	}
	return nil
}

func describe(t reflect.Type) string {
	switch t.Name() {
	case "Prefix":
		return "a CIDR such as 10.244.0.0/16 or fd00::/48"
	case "Addr":
		return "an IP address such as 169.254.20.10"
	}
	return "a " + t.Name()
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "document"
	}
	return path
}

func allowedKeys(fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
