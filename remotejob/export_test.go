package remotejob

import "time"

// SetBootClock makes q's observer read its boot clock from f (test only).
func SetBootClock(q *Queue, f func() (time.Duration, string, error)) { q.boot = f }
