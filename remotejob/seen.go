package remotejob

import "time"

// Seen reports how long this machine has seen version versionID of
// running job id unchanged, on its own CLOCK_BOOTTIME, as its last Expire
// recorded it: ok is false when it has no sighting of that version on this
// boot (no Expire here since the version was written). For people to read
// (status): it reads the observations without their lock (the file is
// replaced whole) and writes nothing.
func (q *Queue) Seen(id, versionID string) (unchanged time.Duration, ok bool, err error) {
	st, err := q.loadSeen()
	if err != nil {
		return 0, false, err
	}
	o, found := st.Jobs[id]
	if !found || o.VersionID != versionID {
		return 0, false, nil
	}
	now, boot, err := q.bootNow()
	if err != nil || o.BootID != boot || o.FirstSeen > now {
		return 0, false, err
	}
	return now - o.FirstSeen, true, nil
}
