package shim

// The loopback plugin's pure parts, for the tests.
var (
	LoopbackResult = loopbackResult
	ParseIfInet6   = parseIfInet6
)
