package procid

// PFForkNoExec is the kernel's PF_FORKNOEXEC bit of a process's flags
// (field 9 of /proc/<pid>/stat, include/linux/sched.h: "forked but didn't
// exec"): set by fork, cleared by execve. On macOS and FreeBSD, ReadStat
// sets it when the kinfo_proc's p_flag lacks P_EXEC ("process called
// exec"), which a child does not inherit at fork. A shell's subshell, forked for a
// command substitution $(...), a pipeline element or ( ... ), has it; the
// shell running a script, which was exec'd, does not.
const PFForkNoExec = 0x40

// ScriptOwner returns the identity of the process that a short-lived
// command run from a script works for: the nearest ancestor of the calling
// process that has exec'd a program, skipping every subshell in between.
// In `t=$(orch-hooks lease acquire ... 2>/dev/null)` bash forks a subshell
// for the substitution and that subshell forks again to run the command:
// the parent dies the moment the command ends, the script that ran it
// lives on, and it is the script's lifetime that matters.
//
// Each step up is taken by identity: an ancestor counts only if, after it
// was read, the process below it is still alive with the same start time
// and still has it as its parent (a process's parent pid changes the moment
// its parent exits, before that pid can be reused), so a chain that dies
// while it is read gives an error, never the pid of an unrelated process.
//
// Where the kernel's flags are not available (not Linux, macOS or FreeBSD)
// it is the calling process's parent.
func ScriptOwner() (Identity, error) { return scriptOwner() }
