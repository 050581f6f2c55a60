package reaper

import (
	"context"
	"fmt"

	"github.com/orch-hooks/orch-hooks/config"
	"github.com/orch-hooks/orch-hooks/gitstate"
	"github.com/orch-hooks/orch-hooks/procid"
)

// SaveState writes st as the reaper's state in stateDir, as a pass does.
func SaveState(stateDir string, st *State) error {
	return updateState(context.Background(), stateDir, func(cur *State) error {
		*cur = *st
		return nil
	})
}

// Judged is one judgement of a job: the verdict, what the reaper state
// holds for the job after it (counted, not saved) and the explanation.
type Judged struct {
	Verdict     string
	State       string
	Explanation Explanation
}

// JudgeBoth judges every running job of store that the pass's listing
// reads from the summary in its marker twice, with the reaper state saved
// in store's dir and the clocks of opts — once from the summary, once from
// the record — and saves nothing. It returns both judgements of each such
// job, and the number of running jobs listed.
func JudgeBoth(store *gitstate.Store, cfg config.Reaper, opts Options) (fromSummary, fromRecord map[string]Judged, listed int, err error) {
	c := opts.readClock()
	jobs, _, err := store.RunningSummarised()
	if err != nil {
		return nil, nil, 0, err
	}
	st, err := LoadState(store.Dir())
	if err != nil {
		return nil, nil, 0, err
	}
	fromSummary, fromRecord = map[string]Judged{}, map[string]Judged{}
	for _, l := range jobs {
		if !l.Summarised {
			continue
		}
		full, err := store.Get(l.ID)
		if err != nil {
			return nil, nil, 0, err
		}
		for _, x := range []struct {
			j   *gitstate.Job
			out map[string]Judged
		}{{l.Job, fromSummary}, {full, fromRecord}} {
			// Each judgement counts into the state as saved.
			streak, hadStreak := st.Streaks[l.ID]
			seen, hadSeen := st.Seen[l.ID]
			v := judge(x.j, st, cfg, c, &procid.GroupTable{}, true, true)
			x.out[l.ID] = Judged{
				Verdict: fmt.Sprintf("tier %q why %q note %q observed %v stop %v err %v ending %q/%q onlyIf %v",
					v.tier, v.why, v.note, v.observed, v.stop, v.err, v.ending.EndedBy, v.ending.Failure, v.ending.OnlyIf == nil),
				State:       fmt.Sprintf("%+v started %s progress %s", st.Streaks[l.ID], sighting(st.Seen[l.ID].Started), sighting(st.Seen[l.ID].Progress)),
				Explanation: explain(x.j, v, cfg, c, nil),
			}
			delete(st.Streaks, l.ID)
			delete(st.Seen, l.ID)
			if hadStreak {
				st.Streaks[l.ID] = streak
			}
			if hadSeen {
				st.Seen[l.ID] = seen
			}
		}
	}
	return fromSummary, fromRecord, len(jobs), nil
}

func sighting(s *Sighting) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *s)
}

// ForgetMonitors closes the monitors' stat files passes keep open, so that
// the next pass checks every monitor as the first pass of a process does.
func ForgetMonitors() {
	monitors.Sweep()
	monitors.Sweep()
}
