package tcp

import (
	"fmt"
	"log/slog"
)

// gnetLogger passes gnet's warnings and errors to slog and drops its chatter.
type gnetLogger struct{ log *slog.Logger }

func (l gnetLogger) Debugf(string, ...any) {}
func (l gnetLogger) Infof(string, ...any)  {}
func (l gnetLogger) Warnf(format string, args ...any) {
	l.log.Warn(fmt.Sprintf(format, args...), "component", "gnet")
}
func (l gnetLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "gnet")
}
func (l gnetLogger) Fatalf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "gnet", "fatal", true)
}
