package httpapi

import "time"

// SetKeepAlive sets the WebSocket pong wait and ping period of APIs made
// after it; the returned function restores the defaults.
func SetKeepAlive(pongWait, pingPeriod time.Duration) (restore func()) {
	oldWait, oldPeriod := wsPongWait, wsPingPeriod
	wsPongWait, wsPingPeriod = pongWait, pingPeriod
	return func() { wsPongWait, wsPingPeriod = oldWait, oldPeriod }
}
