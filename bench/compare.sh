#!/usr/bin/env bash
# bench/compare.sh — before and after, in one run: the same figures for an
# older tree (BASE) and this one, the two measured alternately so that the
# machine's load falls on both alike.
#
# Needs Go, git, hyperfine and jq (installed with apt-get when missing);
# benchstat (golang.org/x/perf/cmd/benchstat@latest) when the module proxy
# serves it, else the Go benchmarks get medians only. Prints ONE table on
# stdout (then benchstat's output); progress on stderr, tools' output in
# $OUT/log.
#
#   BASE=8010d8c bench/compare.sh              # a commit of this repository
#   BASE=/path/to/old/tree bench/compare.sh    # or a checked-out tree
#   SECTIONS="start hook" ROUNDS=2 RUNS=5 BASE=... bench/compare.sh
#
# Sections: start (--help, version, status on an empty and on 1,000-job
# state dirs), hook (hook post-commit not due and due, git commit with the
# installed hooks), lease (lease run -- true), reap (orch-hooks reap),
# gobench (go test -bench, both trees' test binaries: reaper Pass, procid
# Check, hooks Run, merge LeaseHandoff/process), lock (bench/lockbench:
# statefile's Lock/TryLock through the exported API, both trees; and this
# tree's own BenchmarkTryLock|LockPoll|LockHandOff, which keeps the old lock
# as oldLock), watch (bench/reactlat, job done → next stage's command).
#
# Interleaving: every command-line figure is ROUNDS hyperfine invocations
# of RUNS runs each, before and after in one invocation, their order
# swapped every round; medians and [min–max] are over all ROUNDS×RUNS runs,
# CPU (user + system) is hyperfine's mean over them. Go benchmarks run
# -count 1 per round, the two trees' test binaries alternately (ROUNDS_GO
# rounds), and so do lockbench and reactlat.
#
# The older tree is copied (never modified) into $OUT/before-src; the copy
# gets bench/lockbench from this tree when it has none, and its
# reaper BenchmarkPass a cpu-ns/op metric when it has none (the same
# getrusage measure this tree's benchmark reports).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
: "${BASE:?BASE=<commit or directory of the older tree> is required}"
SECTIONS=${SECTIONS:-start hook lease reap gobench lock watch}
ROUNDS=${ROUNDS:-4}
RUNS=${RUNS:-5}
WARMUP=${WARMUP:-2}
ROUNDS_GO=${ROUNDS_GO:-5}
ROUNDS_WATCH=${ROUNDS_WATCH:-3}
WATCH_N=${WATCH_N:-4}
if [ -z "${OUT:-}" ]; then
	OUT=$(mktemp -d "${TMPDIR:-/tmp}/orch-compare.XXXXXX")
	trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log
: >"$LOG"
mkdir -p "$OUT/json" "$OUT/go" "$OUT/bin"
TABLE=$OUT/table.tsv
: >"$TABLE"
LOADS=$OUT/loads
: >"$LOADS"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }
load() { printf '%s %s: %s\n' "$(date -u +%H:%M)" "$1" "$(uptime | sed 's/.*load average: //')" >>"$LOADS"; }

need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v jq >/dev/null || need_pkgs+=(jq)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	say "installing ${need_pkgs[*]} (apt-get)"
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq >>"$LOG" 2>&1
	$SUDO apt-get install -y -qq "${need_pkgs[@]}" >>"$LOG" 2>&1
fi

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
unset ORCH_HOOKS GIT_DIR GIT_WORK_TREE

# ---- the two trees ---------------------------------------------------------
SRC_before=$OUT/before-src
SRC_after=$ROOT
mkdir -p "$SRC_before"
if [ -d "$BASE" ]; then
	tar -C "$BASE" --exclude=.git -cf - . | tar -x -C "$SRC_before"
	base_desc="$(git -C "$BASE" rev-parse --short HEAD 2>/dev/null || echo "$BASE") ($BASE)"
else
	git -C "$ROOT" archive "$BASE" | tar -x -C "$SRC_before"
	base_desc=$(git -C "$ROOT" rev-parse --short "$BASE^{commit}")
fi
after_desc="$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- . ':!bench' ':!docs' || echo ' + uncommitted changes')"
[ -d "$SRC_before/bench/lockbench" ] || cp -r "$ROOT/bench/lockbench" "$SRC_before/bench/"
pb=$SRC_before/reaper/bench_test.go
if [ -f "$pb" ] && ! grep -q 'cpu-ns/op' "$pb"; then
	# Give the older BenchmarkPass this tree's CPU metric: getrusage
	# around the timed loop, per pass.
	perl -0pi -e 's/(\n(\t+)b\.ResetTimer\(\)\n)/\n$2cpu0 := compareCPUTime()$1/; s/(reaper\.RunOnce[^\n]*\n(?:[^\n]*\n){3}\t\t\t\}\n)/$1\t\t\tb.ReportMetric(float64(compareCPUTime()-cpu0)\/float64(b.N), "cpu-ns\/op")\n/' "$pb"
	cat >"$SRC_before/reaper/comparecpu_test.go" <<-'EOF'
		package reaper_test

		import "syscall"

		// compareCPUTime: added by bench/compare.sh to the older tree's copy.
		func compareCPUTime() int64 {
			var ru syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
			return ru.Utime.Nano() + ru.Stime.Nano()
		}
	EOF
	grep -q 'compareCPUTime()-cpu0' "$pb" || say "the older reaper benchmark could not be given cpu-ns/op (see $pb)"
fi

load start
say "building before ($base_desc) and after ($after_desc) into $OUT"
for s in before after; do
	src=SRC_$s
	src=${!src}
	mkdir -p "$OUT/$s"
	(
		cd "$src"
		go build -o "$OUT/$s/orch-hooks" ./cmd/orch-hooks
		for t in seed reactlat lockbench; do go build -o "$OUT/$s/$t" ./bench/$t; done
		if want gobench; then
			for p in reaper procid hooks merge; do go test -c -o "$OUT/$s/$p.test" ./$p; done
		fi
		if want lock && [ $s = after ]; then go test -c -o "$OUT/$s/statefile.test" ./statefile; fi
	) >>"$LOG" 2>&1
done
BENCHSTAT=
if want gobench && GOBIN=$OUT/bin go install golang.org/x/perf/cmd/benchstat@latest >>"$LOG" 2>&1; then
	BENCHSTAT=$OUT/bin/benchstat
fi

# ---- helpers -----------------------------------------------------------------
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$TABLE"; }
calc() { awk "BEGIN{printf \"$1\", $2}"; }
newrepo() {
	git init -q -b main "$1"
	git -C "$1" commit -q --allow-empty -m init
}
# order R : the two sides in round R's order (swapped every round)
order() { if [ $(($1 % 2)) = 1 ]; then echo before after; else echo after before; fi; }

# hfx KEY CMD_BEFORE CMD_AFTER : ROUNDS hyperfine invocations, alternating
# the order; their runs merged into $OUT/json/KEY.json: one object per
# side with every run's time (s) and the mean CPU time (s).
hfx() {
	local key=$1 r s args
	declare -A cmd=([before]=$2 [after]=$3)
	for r in $(seq "$ROUNDS"); do
		args=()
		for s in $(order "$r"); do args+=(-n "$s" "${cmd[$s]}"); done
		hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --style basic \
			--export-json "$OUT/json/$key.r$r.json" "${args[@]}" >>"$LOG" 2>&1
	done
	jq -s '[.[].results[]] | group_by(.command) | map({key: .[0].command, value: {
		times: ([.[].times[]] | sort),
		cpu: ((map((.user + .system) * (.times | length)) | add) / (map(.times | length) | add))}}) | from_entries' \
		"$OUT"/json/"$key".r*.json >"$OUT/json/$key.json"
}
# hstat KEY SIDE : "median min max cpu" in ms
hstat() {
	jq -r --arg s "$2" '.[$s] | .times as $t | ($t | length) as $n |
		(if $n % 2 == 1 then $t[($n - 1) / 2] else ($t[$n / 2 - 1] + $t[$n / 2]) / 2 end) as $m |
		"\($m * 1000) \($t[0] * 1000) \($t[-1] * 1000) \(.cpu * 1000)"' "$OUT/json/$1.json"
}
# hrow SECTION CASE KEY : a table row of a hyperfine figure
hrow() {
	local bm blo bhi bc am alo ahi ac
	read -r bm blo bhi bc < <(hstat "$3" before)
	read -r am alo ahi ac < <(hstat "$3" after)
	row "$1" "$2" \
		"$(calc '%.2f ms [%.2f–%.2f], cpu %.2f' "$bm, $blo, $bhi, $bc")" \
		"$(calc '%.2f ms [%.2f–%.2f], cpu %.2f' "$am, $alo, $ahi, $ac")" \
		"$(calc '×%.2f' "$am / $bm")" "$(calc '×%.2f' "$ac / $bc")"
}

# ---- state dirs, one set per side, written by that side's own binaries ----
if want start || want hook || want lease || want reap; then
	say "state dirs: empty, 1,000 queued, 1,000 running (monitor: this shell), 1,000 running with bare markers"
	for s in before after; do
		R=$OUT/repo/$s
		O=$OUT/$s/orch-hooks
		for c in empty q1000 r1000 r1000bare r1000nb; do
			newrepo "$R/$c"
			(cd "$R/$c" && "$O" init >>"$LOG" 2>&1)
		done
		(cd "$R/q1000" && "$O" install >>"$LOG" 2>&1)
		"$OUT/$s/seed" -C "$R/q1000" -queued 1000
		"$OUT/$s/seed" -C "$R/r1000" -running 1000 -monitor $$
		"$OUT/$s/seed" -C "$R/r1000bare" -running 1000 -monitor $$ -bare
		# A hook's pass stops at hooks.budget_ms (200 ms): under load a
		# pass over 1,000 jobs is cut short, and how far it got varies.
		# This one has all the time it needs.
		"$OUT/$s/seed" -C "$R/r1000nb" -running 1000 -monitor $$
		sed -i 's/^budget_ms = .*/budget_ms = 60000/' "$R/r1000nb/orch.toml"
		grep -q '^budget_ms = 60000' "$R/r1000nb/orch.toml" || { say "no budget_ms line in $R/r1000nb/orch.toml"; exit 1; }
		for c in empty q1000 r1000 r1000bare r1000nb; do "$O" -C "$R/$c" reap >>"$LOG" 2>&1; done
	done
	B="$OUT/before/orch-hooks"
	A="$OUT/after/orch-hooks"
	RB=$OUT/repo/before
	RA=$OUT/repo/after
fi

if want start; then
	say "start: --help, version, status"
	load start-up
	hfx help "$B --help" "$A --help"
	hrow "start-up" "orch-hooks --help" help
	hfx version "$B version" "$A version"
	hrow "start-up" "orch-hooks version" version
	hfx status0 "$B -C $RB/empty status" "$A -C $RA/empty status"
	hrow "start-up" "status, empty state dir" status0
	hfx statusq "$B -C $RB/q1000 status" "$A -C $RA/q1000 status"
	hrow "start-up" "status, 1,000 queued" statusq
	hfx statusr "$B -C $RB/r1000 status" "$A -C $RA/r1000 status"
	hrow "start-up" "status, 1,000 running (live monitor)" statusr
fi

if want hook; then
	say "hook: hook post-commit (not due, due), git commit"
	load hook
	hfx hookskip "$B -C $RB/q1000 hook post-commit" "$A -C $RA/q1000 hook post-commit"
	hrow "hook" "orch-hooks hook post-commit, pass not due, 1,000 queued" hookskip
	hfx hookpass0 "env ORCH_REAPER_INTERVAL_S=0 $B -C $RB/empty hook post-commit" \
		"env ORCH_REAPER_INTERVAL_S=0 $A -C $RA/empty hook post-commit"
	hrow "hook" "hook post-commit, a pass (ORCH_REAPER_INTERVAL_S=0), empty" hookpass0
	hfx hookpassr "env ORCH_REAPER_INTERVAL_S=0 $B -C $RB/r1000 hook post-commit" \
		"env ORCH_REAPER_INTERVAL_S=0 $A -C $RA/r1000 hook post-commit"
	hrow "hook" "hook post-commit, a pass, 1,000 running (within the 200 ms budget: cut short under load)" hookpassr
	hfx hookpassnb "env ORCH_REAPER_INTERVAL_S=0 $B -C $RB/r1000nb hook post-commit" \
		"env ORCH_REAPER_INTERVAL_S=0 $A -C $RA/r1000nb hook post-commit"
	hrow "hook" "hook post-commit, a pass, 1,000 running, budget_ms = 60000 (the whole pass)" hookpassnb
	hfx commit "git -C $RB/q1000 commit --allow-empty -q -m x" "git -C $RA/q1000 commit --allow-empty -q -m x"
	hrow "hook" "git commit, installed hooks, 1,000 queued (the script decides)" commit
	hfx commitpass "env ORCH_REAPER_INTERVAL_S=0 git -C $RB/q1000 commit --allow-empty -q -m x" \
		"env ORCH_REAPER_INTERVAL_S=0 git -C $RA/q1000 commit --allow-empty -q -m x"
	hrow "hook" "git commit, installed hooks, a pass every commit, 1,000 queued" commitpass
fi

if want lease; then
	say "lease: lease run -- true"
	load lease
	hfx lease "$B -C $RB/empty lease run --target main -- /bin/true" "$A -C $RA/empty lease run --target main -- /bin/true"
	hrow "lease" "lease run --target main -- true (acquire, run, release)" lease
fi

if want reap; then
	say "reap: orch-hooks reap"
	load reap
	hfx reap0 "$B -C $RB/empty reap" "$A -C $RA/empty reap"
	hrow "reap" "orch-hooks reap, 0 running" reap0
	hfx reapr "$B -C $RB/r1000 reap" "$A -C $RA/r1000 reap"
	hrow "reap" "orch-hooks reap, 1,000 running" reapr
	hfx reapbare "$B -C $RB/r1000bare reap" "$A -C $RA/r1000bare reap"
	hrow "reap" "orch-hooks reap, 1,000 running, bare markers" reapbare
fi

# ---- Go benchmarks ---------------------------------------------------------------
# gob PKG BENCH ARGS... : ROUNDS_GO rounds of -count 1, both trees alternately,
# into $OUT/go/PKG.{before,after}.txt
gob() {
	local p=$1 r s
	shift
	: >"$OUT/go/$p.before.txt"
	: >"$OUT/go/$p.after.txt"
	for r in $(seq "$ROUNDS_GO"); do
		for s in $(order "$r"); do
			src=SRC_$s
			(cd "${!src}/$p" && "$OUT/$s/$p.test" -test.run '^$' -test.count 1 "$@") >>"$OUT/go/$p.$s.txt" 2>>"$LOG"
		done
	done
	cat "$OUT/go/$p.before.txt" "$OUT/go/$p.after.txt" >>"$LOG"
}
# gomed FILE : "name unit median n" for every benchmark and unit in FILE
gomed() {
	awk '/^Benchmark/ { n = $1; sub(/-[0-9]+$/, "", n); for (i = 3; i < NF; i += 2) print n, $(i + 1), $i }' "$1" |
		sort -k1,1 -k2,2 -k3,3g |
		awk '{ k = $1 " " $2; v[k] = v[k] " " $3 } END { for (k in v) { c = split(substr(v[k], 2), a, " "); m = (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2; print k, m, c } }' | sort
}
# fmtv VALUE UNIT : a readable figure
fmtv() {
	case $2 in
	ns/op | cpu-ns/op)
		awk -v v="$1" 'BEGIN{ if (v >= 1e7) printf "%.1f ms", v / 1e6; else if (v >= 1e6) printf "%.2f ms", v / 1e6; else if (v >= 1e4) printf "%.1f µs", v / 1e3; else printf "%.0f ns", v }' ;;
	*-µs) awk -v v="$1" 'BEGIN{ printf "%.2f ms", v / 1e3 }' ;;
	*) printf '%s %s' "$1" "$2" ;;
	esac
}
# gorows SECTION PKG : a row per benchmark: ns/op and cpu-ns/op in one, or
# its other metrics (p50-µs, p99-µs)
gorows() {
	local f
	declare -A med
	for s in before after; do
		while read -r n u m c; do med[$s $n $u]=$m; med[$s $n n]=$c; done < <(gomed "$OUT/go/$2.$s.txt")
	done
	for n in $(gomed "$OUT/go/$2.after.txt" | awk '{print $1}' | sort -u); do
		[ -n "${med[before $n ns/op]:-}" ] || continue
		for u in ns/op p50-µs p99-µs; do
			[ -n "${med[before $n $u]:-}" ] && [ -n "${med[after $n $u]:-}" ] || continue
			local b=${med[before $n $u]} a=${med[after $n $u]} bc=${med[before $n cpu-ns/op]:-} ac=${med[after $n cpu-ns/op]:-}
			[ "$u" != ns/op ] || [ "$b" != 0 ] || continue
			local bf af cr=
			bf=$(fmtv "$b" "$u")
			af=$(fmtv "$a" "$u")
			if [ "$u" = ns/op ] && [ -n "$bc" ] && [ -n "$ac" ]; then
				bf="$bf, cpu $(fmtv "$bc" ns/op)"
				af="$af, cpu $(fmtv "$ac" ns/op)"
				cr=$(calc '×%.2f' "$ac / $bc")
			fi
			row "$1" "${n#Benchmark} ($u, n=${med[before $n n]}+${med[after $n n]})" "$bf" "$af" "$(calc '×%.2f' "$a / $b")" "$cr"
		done
	done
	# reaper: per running job over 0 running
	if [ "$2" = reaper ]; then
		local z=BenchmarkPass/running=0/ended=0/markers=summary
		for m in summary bare; do
			local k=BenchmarkPass/running=1000/ended=0/markers=$m
			[ -n "${med[before $k ns/op]:-}" ] && [ -n "${med[after $k ns/op]:-}" ] || continue
			local bj aj bjc= ajc= cr=
			bj=$(calc %.1f "(${med[before $k ns/op]} - ${med[before $z ns/op]}) / 1e6")
			aj=$(calc %.1f "(${med[after $k ns/op]} - ${med[after $z ns/op]}) / 1e6")
			if [ -n "${med[before $k cpu-ns/op]:-}" ] && [ -n "${med[after $k cpu-ns/op]:-}" ]; then
				bjc=$(calc %.1f "(${med[before $k cpu-ns/op]} - ${med[before $z cpu-ns/op]}) / 1e6")
				ajc=$(calc %.1f "(${med[after $k cpu-ns/op]} - ${med[after $z cpu-ns/op]}) / 1e6")
				cr=$(calc '×%.2f' "$ajc / $bjc")
			fi
			row "$1" "Pass: per running job left alone, markers=$m ((1000 − 0 running) / 1000, of the medians)" \
				"$bj µs${bjc:+, cpu $bjc µs}" "$aj µs${ajc:+, cpu $ajc µs}" "$(calc '×%.2f' "$aj / $bj")" "$cr"
		done
	fi
}

if want gobench; then
	say "gobench: reaper Pass, procid Check, hooks Run, merge LeaseHandoff/process ($ROUNDS_GO rounds each)"
	load gobench
	gob reaper -test.bench 'Pass/running=(0|1000)/ended=0/markers=(summary|bare)$' -test.skip 'Pass/.*/.*/.*/(explain|cold)' -test.benchtime 30x
	gorows "go reaper" reaper
	load gobench-procid
	gob procid -test.bench 'Check' -test.benchtime 20000x
	gorows "go procid" procid
	gob hooks -test.bench 'Run' -test.benchtime 100x
	gorows "go hooks" hooks
	load gobench-merge
	gob merge -test.bench 'LeaseHandoff/process' -test.benchtime 100x
	gorows "go merge" merge
fi

if want lock; then
	say "lock: bench/lockbench, both trees ($ROUNDS_GO rounds); this tree's statefile benchmarks"
	load lock
	for s in before after; do : >"$OUT/go/lockbench.$s.tsv"; done
	for r in $(seq "$ROUNDS_GO"); do
		for s in $(order "$r"); do "$OUT/$s/lockbench" >>"$OUT/go/lockbench.$s.tsv" 2>>"$LOG"; done
	done
	lmed() { # SIDE NAME COLUMN : the median of a column over the rounds
		awk -v n="$2" -v c="$3" '$1 == n {print $c}' "$OUT/go/lockbench.$1.tsv" | sort -g |
			awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
	}
	for n in trylock-free lock-free trylock-held; do
		b=$(lmed before $n 2); a=$(lmed after $n 2); bc=$(lmed before $n 3); ac=$(lmed after $n 3)
		row "lock" "lockbench $n (per call, n=$ROUNDS_GO rounds)" "$(fmtv "$b" ns/op), cpu $(fmtv "$bc" ns/op)" \
			"$(fmtv "$a" ns/op), cpu $(fmtv "$ac" ns/op)" "$(calc '×%.2f' "$a / $b")" "$(calc '×%.2f' "$ac / $bc")"
	done
	n=handoff-20ms
	b=$(lmed before $n 4); a=$(lmed after $n 4); b9=$(lmed before $n 5); a9=$(lmed after $n 5); bc=$(lmed before $n 3); ac=$(lmed after $n 3)
	row "lock" "lockbench: Lock of a lock released after a 20 ms hold (another goroutine): delay p50 (p90); cpu per wait" \
		"$(calc '%.2f ms (%.2f), cpu %.2f ms' "$b / 1000, $b9 / 1000, $bc / 1e6")" \
		"$(calc '%.2f ms (%.2f), cpu %.2f ms' "$a / 1000, $a9 / 1000, $ac / 1e6")" \
		"$(calc '×%.2f' "$a / $b")" "$(calc '×%.2f' "$ac / $bc")"
	(cd "$SRC_after/statefile" && "$OUT/after/statefile.test" -test.run '^$' -test.bench 'TryLock|LockPoll|LockHandOff/process/20ms' -test.count "$ROUNDS_GO") >"$OUT/go/statefile.after.txt" 2>>"$LOG" || true
	cat "$OUT/go/statefile.after.txt" >>"$LOG"
	declare -A sm=()
	while read -r n u m c; do sm[$n $u]=$m; done < <(gomed "$OUT/go/statefile.after.txt")
	for c in TryLock LockPoll; do
		b=${sm[Benchmark$c/old ns/op]:-}; a=${sm[Benchmark$c/new ns/op]:-}
		bc=${sm[Benchmark$c/old cpu-ns/op]:-}; ac=${sm[Benchmark$c/new cpu-ns/op]:-}
		[ -n "$b" ] && [ -n "$a" ] && [ -n "$bc" ] && [ -n "$ac" ] || continue
		row "lock" "this tree's Benchmark$c: old (oldLock, a copy kept in a test file) vs new, one binary" \
			"$(fmtv "$b" ns/op), cpu $(fmtv "$bc" ns/op)" "$(fmtv "$a" ns/op), cpu $(fmtv "$ac" ns/op)" \
			"$(calc '×%.2f' "$a / $b")" "$(calc '×%.2f' "$ac / $bc")"
	done
	b=${sm[BenchmarkLockHandOff/process/20ms/old handoff-ms]:-}; a=${sm[BenchmarkLockHandOff/process/20ms/new handoff-ms]:-}
	[ -z "$b" ] || [ -z "$a" ] || row "lock" "this tree's BenchmarkLockHandOff/process/20ms: old vs new, mean delay" \
		"$b ms" "$a ms" "$(calc '×%.2f' "$a / $b")" ""
fi

if want watch; then
	say "watch: bench/reactlat, $ROUNDS_WATCH rounds of $WATCH_N pipelines per tree"
	load watch
	for s in before after; do : >"$OUT/react.$s.tsv"; done
	for r in $(seq "$ROUNDS_WATCH"); do
		for s in $(order "$r"); do
			"$OUT/$s/reactlat" -orch "$OUT/$s/orch-hooks" -C "$OUT/react/$s$r" -interval 2s -n "$WATCH_N" -seed "$r" >>"$OUT/react.$s.tsv" 2>>"$LOG" ||
				say "watch: reactlat failed for $s, round $r (see $LOG)"
		done
	done
	wmed() { awk -v k="$2" '$1 == k {print $2}' "$OUT/react.$1.tsv" | sort -g | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s %s %s %d\n", m, a[1], a[NR], NR}'; }
	for k in s2s e2e claim prep; do
		case $k in
		s2s) what="watch: job done → next stage's command running" ;;
		e2e) what="watch: enqueue → last of 3 instant stages done" ;;
		claim) what="watch, part: next job queued → its monitor has claimed it (dispatch, process start, claim)" ;;
		prep) what="watch, part: claimed → command started (worktree, start)" ;;
		esac
		read -r bm blo bhi bn < <(wmed before $k)
		read -r am alo ahi an < <(wmed after $k)
		[ "$bn" -gt 0 ] && [ "$an" -gt 0 ] || continue
		row "watch" "$what" "$(calc '%.0f ms [%.0f–%.0f] (n=%d)' "$bm, $blo, $bhi, $bn")" \
			"$(calc '%.0f ms [%.0f–%.0f] (n=%d)' "$am, $alo, $ahi, $an")" "$(calc '×%.2f' "$am / $bm")" ""
	done
fi
load end

# ---- the table -------------------------------------------------------------------
{
	printf '\norch-hooks before/after — %s, %s cores, %s, %s, %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
		"$(uname -r)" "$(go version | awk '{print $3}')" "$(git --version)"
	printf 'before: %s; after: %s\n' "$base_desc" "$after_desc"
	printf 'command figures: %s rounds of hyperfine -N --warmup %s --runs %s, order swapped every round: median [min–max] of all runs, cpu = mean user+sys (ms)\n' "$ROUNDS" "$WARMUP" "$RUNS"
	printf 'Go benchmarks: %s rounds of -count 1 per tree, alternately: medians\n' "$ROUNDS_GO"
	printf 'load average (1/5/15 min):\n'
	sed 's/^/  /' "$LOADS"
	printf '\n| section | case | before | after | after/before | cpu after/before |\n|---|---|---|---|---|---|\n'
	while IFS=$'\t' read -r a b c d e f; do printf '| %s | %s | %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d" "$e" "$f"; done <"$TABLE"
	if [ -n "$BENCHSTAT" ]; then
		for p in reaper procid hooks merge; do
			[ -s "$OUT/go/$p.before.txt" ] || continue
			printf '\nbenchstat %s (before vs after):\n\n' "$p"
			(cd "$OUT/go" && "$BENCHSTAT" before=$p.before.txt after=$p.after.txt) 2>&1 | sed 's/^/    /'
		done
	fi
}
