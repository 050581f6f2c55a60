#!/usr/bin/env bash
# bench/run.sh — the benchmark suite of orch-hooks (issue 8).
#
# Needs Go, git, and hyperfine + jq (installed with apt-get when missing).
# Builds the binary, builds scratch repositories under $OUT (a temp dir by
# default; OUT=bench/out keeps them), and prints ONE table on stdout: every
# figure a median with its spread, every comparison a ratio of figures taken
# in this same run. Progress goes to stderr, tool output to $OUT/log.
#
#   bench/run.sh                     # everything, ~10 minutes on 2 cores
#   SECTIONS="1 3" bench/run.sh      # some sections only
#   RUNS=10 bench/run.sh             # fewer hyperfine runs per figure
#   SECTIONS=6 REACT_RUNS=21 bench/run.sh   # watch reaction, more pipelines
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
SECTIONS=${SECTIONS:-1 2 3 4 5 6}
RUNS=${RUNS:-20}
WARMUP=${WARMUP:-3}
if [ -z "${OUT:-}" ]; then
	OUT=$(mktemp -d "${TMPDIR:-/tmp}/orch-bench.XXXXXX")
	trap 'rm -rf "$OUT"' EXIT
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log
: >"$LOG"
mkdir -p "$OUT/json" "$OUT/bin"
TABLE=$OUT/table.tsv
: >"$TABLE"

say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- tools ---------------------------------------------------------------
need_pkgs=()
command -v hyperfine >/dev/null || need_pkgs+=(hyperfine)
command -v jq >/dev/null || need_pkgs+=(jq)
if [ ${#need_pkgs[@]} -gt 0 ]; then
	say "installing ${need_pkgs[*]} (apt-get)"
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq >>"$LOG" 2>&1
	$SUDO apt-get install -y -qq "${need_pkgs[@]}" >>"$LOG" 2>&1
fi

# Scratch repositories are not the user's: no global or system config, a
# fixed identity, no hooks of orch-hooks' own children disabled by mistake.
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
unset ORCH_HOOKS GIT_DIR GIT_WORK_TREE

say "building into $OUT"
go build -o "$OUT/orch-hooks" ./cmd/orch-hooks
go build -o "$OUT/empty" ./bench/empty
go build -o "$OUT/seed" ./bench/seed
go build -o "$OUT/ancestry" ./bench/ancestry
ORCH=$OUT/orch-hooks

# ---- measurement helpers -------------------------------------------------
# hf KEY CMD... : hyperfine (no intermediate shell) -> $OUT/json/KEY.json
hf() {
	local key=$1; shift
	hyperfine -N --warmup "$WARMUP" --runs "$RUNS" --style basic \
		--export-json "$OUT/json/$key.json" "$@" >>"$LOG" 2>&1
}
# stat KEY FIELD : a field of a hyperfine result, in ms (median stddev min max)
stat() { jq -r ".results[0].$2 * 1000" "$OUT/json/$1.json"; }
# cpu KEY : user + system CPU time in ms (hyperfine gives means only); far
# less disturbed than wall time when other work shares the machine.
cpu() { jq -r '(.results[0].user + .results[0].system) * 1000' "$OUT/json/$1.json"; }
# fmt_ms KEY : "12.3 ms ±0.4 [11.9–13.8] (cpu 8.1 ms)"
fmt_ms() {
	awk -v m="$(stat "$1" median)" -v s="$(stat "$1" stddev)" -v lo="$(stat "$1" min)" -v hi="$(stat "$1" max)" -v c="$(cpu "$1")" \
		'BEGIN{printf "%.2f ms ±%.2f [%.2f–%.2f] (cpu %.1f ms)", m, s, lo, hi, c}'
}
# row SECTION CASE FIGURE [RATIO]
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$TABLE"; }
calc() { awk "BEGIN{printf \"$1\", $2}"; }

# newrepo DIR : a repository on main with one commit
newrepo() {
	git init -q -b main "$1"
	git -C "$1" commit -q --allow-empty -m init
}

# ---- 1. git commit with hooks --------------------------------------------
if want 1; then
	say "1: git commit: no hooks / floor / orch-hooks at 0, 1k, 10k active / lefthook"
	R=$OUT/commit
	newrepo "$R/none"
	newrepo "$R/floor"
	printf '#!/bin/sh\nexec %s\n' "$OUT/empty" >"$R/floor/.git/hooks/post-commit"
	chmod +x "$R/floor/.git/hooks/post-commit"
	for n in 0 1000 10000; do
		newrepo "$R/orch$n"
		(cd "$R/orch$n" && "$ORCH" init >>"$LOG" 2>&1 && "$ORCH" install >>"$LOG" 2>&1)
		[ "$n" = 0 ] || "$OUT/seed" -C "$R/orch$n" -queued "$n"
	done
	# Hooks outside the git dir (core.hooksPath, which other repositories
	# may share): the script cannot tell which state dir is its own, so it
	# always starts the binary, which decides from hook-due.
	newrepo "$R/orchbin1000"
	git -C "$R/orchbin1000" config core.hooksPath "$R/orchbin1000-hooks"
	(cd "$R/orchbin1000" && "$ORCH" init >>"$LOG" 2>&1 && "$ORCH" install >>"$LOG" 2>&1)
	"$OUT/seed" -C "$R/orchbin1000" -queued 1000
	lefthook=
	if GOBIN=$OUT/bin go install github.com/evilmartians/lefthook@v1.13.6 >>"$LOG" 2>&1; then
		newrepo "$R/lefthook"
		: >"$R/lefthook/lefthook.yml"
		(cd "$R/lefthook" && PATH=$OUT/bin:$PATH lefthook install >>"$LOG" 2>&1) && lefthook=1
	fi
	cmds=(-n none "git -C $R/none commit --allow-empty -q -m x"
		-n floor "git -C $R/floor commit --allow-empty -q -m x"
		-n orch0 "git -C $R/orch0 commit --allow-empty -q -m x"
		-n orch1000 "git -C $R/orch1000 commit --allow-empty -q -m x"
		-n orch10000 "git -C $R/orch10000 commit --allow-empty -q -m x"
		-n orchbin1000 "git -C $R/orchbin1000 commit --allow-empty -q -m x")
	# A hook skips its pass when the last one is younger than
	# reaper.interval_s (30 s) and orch.toml has not changed: most commits
	# take that path, in the script itself (hook-due). With
	# ORCH_REAPER_INTERVAL_S=0 every commit makes a full pass (the env
	# exec, ~1 ms, counts against orch-hooks).
	for n in 0 1000 10000; do
		cmds+=(-n "orchpass$n" "env ORCH_REAPER_INTERVAL_S=0 git -C $R/orch$n commit --allow-empty -q -m x")
	done
	[ -z "$lefthook" ] || cmds+=(-n lefthook "git -C $R/lefthook commit --allow-empty -q -m x")
	# One hyperfine invocation: the figures being compared come from one run.
	PATH=$OUT/bin:$PATH hf commit "${cmds[@]}"
	# Split the results into one file per command, for stat/fmt_ms.
	i=0
	for k in none floor orch0 orch1000 orch10000 orchbin1000 orchpass0 orchpass1000 orchpass10000 ${lefthook:+lefthook}; do
		jq "{results: [.results[$i]]}" "$OUT/json/commit.json" >"$OUT/json/commit-$k.json"
		i=$((i + 1))
	done
	base=$(stat commit-none median)
	floor_add=$(calc %.3f "$(stat commit-floor median) - $base")
	lh_add=
	[ -z "$lefthook" ] || lh_add=$(calc %.3f "$(stat commit-lefthook median) - $base")
	cbase=$(cpu commit-none)
	floor_cadd=$(calc %.3f "$(cpu commit-floor) - $cbase")
	lh_cadd=
	[ -z "$lefthook" ] || lh_cadd=$(calc %.3f "$(cpu commit-lefthook) - $cbase")
	row "1 git commit" "no hooks" "$(fmt_ms commit-none)"
	row "1 git commit" "floor hook (sh + exec empty Go binary)" "$(fmt_ms commit-floor)" "adds $floor_add ms (cpu $floor_cadd ms)"
	for k in orch0 orch1000 orch10000 orchbin1000 orchpass0 orchpass1000 orchpass10000; do
		n=${k#orch}
		n=${n#pass}
		n=${n#bin}
		what="orch-hooks hooks, $n active jobs"
		case $k in
		orchpass*) what="$what, a pass every commit (ORCH_REAPER_INTERVAL_S=0)" ;;
		orchbin*) what="$what, core.hooksPath elsewhere (the binary starts and decides)" ;;
		esac
		add=$(calc %.3f "$(stat commit-$k median) - $base")
		cadd=$(calc %.3f "$(cpu commit-$k) - $cbase")
		r="adds $add ms: ×$(calc %.2f "$add / $floor_add") floor"
		[ -z "$lh_add" ] || r="$r, ×$(calc %.2f "$add / $lh_add") lefthook"
		r="$r; cpu adds $cadd ms: ×$(calc %.2f "$cadd / $floor_cadd") floor"
		[ -z "$lh_cadd" ] || r="$r, ×$(calc %.2f "$cadd / $lh_cadd") lefthook"
		row "1 git commit" "$what" "$(fmt_ms commit-$k)" "$r"
	done
	if [ -n "$lefthook" ]; then
		row "1 git commit" "lefthook v1.13.6, empty lefthook.yml" "$(fmt_ms commit-lefthook)" "adds $lh_add ms (cpu $lh_cadd ms)"
	else
		row "1 git commit" "lefthook" "lefthook: not available" ""
	fi
fi

# ---- 2. reaper pass -------------------------------------------------------
if want 2; then
	say "2: reaper pass: running/ended"
	R=$OUT/reap
	# run/ended[/bare]: bare markers are empty, as an older version left
	# them, so the pass reads and decodes every running job's record (the
	# code path before markers held summaries): the baseline of the rows
	# without. 0/0 is the pass's fixed cost, taken off for the per-job cost.
	cases="0/0 10/0 10/10000 10/100000 100/0 1000/0 1000/0/bare 10000/0 10000/0/bare"
	cmds=()
	for c in $cases; do
		IFS=/ read -r run ended bare <<<"$c"
		d=$R/r${run}e${ended}${bare}
		newrepo "$d"
		(cd "$d" && "$ORCH" init >>"$LOG" 2>&1)
		# Every running job's monitor is this shell: alive, with its real
		# start time, so a pass reads and checks every job and reaps none.
		"$OUT/seed" -C "$d" -running "$run" -ended "$ended" -monitor $$ ${bare:+-bare}
		"$ORCH" -C "$d" reap >>"$LOG" 2>&1
		cmds+=(-n "r${run}e${ended}${bare}" "$ORCH -C $d reap")
	done
	hf reap "${cmds[@]}"
	i=0
	declare -A reapkey
	for c in $cases; do
		jq "{results: [.results[$i]]}" "$OUT/json/reap.json" >"$OUT/json/reap-$i.json"
		reapkey[$c]=reap-$i
		i=$((i + 1))
	done
	fixed=$(stat "${reapkey[0/0]}" median)
	fixedcpu=$(cpu "${reapkey[0/0]}")
	for c in $cases; do
		IFS=/ read -r run ended bare <<<"$c"
		k=${reapkey[$c]}
		r=
		if [ "$run" = 10 ] && [ "$ended" != 0 ]; then
			b=${reapkey[10/0]}
			r="×$(calc %.2f "$(stat $k median) / $(stat $b median)") of 0 ended (cpu ×$(calc %.2f "$(cpu $k) / $(cpu $b)"))"
		elif [ "$run" -ge 100 ]; then
			r="$(calc %.1f "($(stat $k median) - $fixed) * 1000 / $run") µs per running job over 0 running (cpu $(calc %.1f "($(cpu $k) - $fixedcpu) * 1000 / $run") µs)"
			if [ -z "$bare" ] && [ -n "${reapkey[$run/$ended/bare]:-}" ]; then
				b=${reapkey[$run/$ended/bare]}
				r="$r; ×$(calc %.2f "$(stat $k median) / $(stat $b median)") of bare markers (cpu ×$(calc %.2f "$(cpu $k) / $(cpu $b)"))"
			fi
		fi
		what="orch-hooks reap: $run running, $ended ended"
		[ -z "$bare" ] || what="$what, bare markers (every record read: the code path before summaries)"
		row "2 reap pass" "$what" "$(fmt_ms $k)" "$r"
	done
	"$ORCH" -C "$R/r10e100000" status | tail -n 3 >>"$LOG" 2>&1 || true
fi

# ---- 3. ancestry ------------------------------------------------------------
if want 3; then
	say "3: ancestry on 200,000-commit histories"
	R=$OUT/anc
	for shape in linear merges; do
		d=$R/$shape
		git init -q -b main "$d"
		"$OUT/ancestry" gen -shape "$shape" -n 200000 | git -C "$d" fast-import --quiet
		for graph in no yes; do
			if [ "$graph" = yes ]; then
				git -C "$d" commit-graph write --reachable >>"$LOG" 2>&1
			fi
			# One line per query: name median stddev min max (ms) for orch and git.
			"$OUT/ancestry" time -C "$d" -n "$RUNS" >"$OUT/anc-$shape-$graph.tsv" 2>>"$LOG"
			while IFS=$'\t' read -r q om os olo ohi gm gs glo ghi want; do
				fig=$(printf 'gitstate %.2f ms ±%.2f [%.2f–%.2f]; git %.2f ms ±%.2f [%.2f–%.2f]' \
					"$om" "$os" "$olo" "$ohi" "$gm" "$gs" "$glo" "$ghi")
				row "3 ancestry" "$shape 200k, commit-graph $graph, $q ($want)" "$fig" "orch/git ×$(calc %.2f "$om / $gm")"
			done <"$OUT/anc-$shape-$graph.tsv"
		done
	done
fi

# ---- 4. lease hand-off -------------------------------------------------------
if want 4; then
	say "4: lease hand-off, 1,000 hand-offs"
	go test ./merge -run '^$' -bench 'LeaseHandoff/process' -benchtime 1000x -count 1 >"$OUT/handoff.txt" 2>>"$LOG"
	cat "$OUT/handoff.txt" >>"$LOG"
	grep '^BenchmarkLeaseHandoff' "$OUT/handoff.txt" | while read -r name _ _ _ rest; do
		p50=$(awk '{for(i=1;i<NF;i++) if($(i+1)=="p50-µs") print $i}' <<<"$rest")
		p99=$(awk '{for(i=1;i<NF;i++) if($(i+1)=="p99-µs") print $i}' <<<"$rest")
		case=${name#BenchmarkLeaseHandoff/}
		case=${case%-[0-9]*}
		row "4 lease hand-off" "release → waiter holds, $case, 1,000×" \
			"$(calc 'median %.3f ms, p99 %.3f ms' "$p50 / 1000, $p99 / 1000")" ""
	done
fi

# ---- 5. 16 concurrent merges -----------------------------------------------------
if want 5; then
	say "5: 16 concurrent orch-hooks merge processes, 16 branches"
	R=$OUT/merge
	MRUNS=${MRUNS:-7}
	: >"$OUT/merge16.txt"
	for run in $(seq "$MRUNS"); do
		d=$R/m$run
		newrepo "$d"
		(cd "$d" && "$ORCH" init >>"$LOG" 2>&1)
		for j in $(seq -w 0 15); do
			git -C "$d" checkout -q -b "feat/$j" main
			echo x >"$d/f$j.txt"
			git -C "$d" add "f$j.txt"
			git -C "$d" commit -q -m "f$j"
		done
		git -C "$d" checkout -q main
		# A barrier: every merger waits on the same fifo, opened for
		# writing (and so released) once all 16 are started.
		fifo=$OUT/barrier$run
		mkfifo "$fifo"
		pids=()
		for j in $(seq -w 0 15); do
			(read -r _ <"$fifo"; exec env ORCH_HOOKS=0 "$ORCH" -C "$d" merge --branch "feat/$j" --into main --wait 10m >>"$LOG" 2>&1) &
			pids+=($!)
		done
		sleep 0.5
		t0=$(date +%s%N)
		printf 'go\n%.0s' $(seq 16) >"$fifo"
		fail=0
		for p in "${pids[@]}"; do wait "$p" || fail=1; done
		t1=$(date +%s%N)
		rm -f "$fifo"
		n=$(git -C "$d" rev-list --count --first-parent main)
		if [ "$fail" = 1 ] || [ "$n" != 17 ]; then
			say "5: run $run: a merge failed or main has $n first-parent commits (want 17); see $LOG"
			continue
		fi
		echo $(((t1 - t0) / 1000)) >>"$OUT/merge16.txt"
	done
	if [ -s "$OUT/merge16.txt" ]; then
		read -r med lo hi cnt < <(sort -n "$OUT/merge16.txt" | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR], NR}')
		row "5 16 merges" "16 orch-hooks merge processes at once, 16 branches ($cnt runs)" \
			"$(calc 'wall %.0f ms [%.0f–%.0f]' "$med / 1000, $lo / 1000, $hi / 1000")" \
			"$(calc '%.1f merges/s [%.1f–%.1f]' "16e6 / $med, 16e6 / $hi, 16e6 / $lo")"
	else
		row "5 16 merges" "16 orch-hooks merge processes" "failed: see log" ""
	fi
fi

# ---- 6. watch reacts -------------------------------------------------------
if want 6; then
	say "6: watch: job done → next stage's command, enqueue → last of 3 stages done"
	R=$OUT/react
	mkdir -p "$R"
	# The baseline: the last watch that dispatched only once per interval
	# (before issue 15 item 2), built from git in this same run.
	WATCH_BASE=${WATCH_BASE:-4c8a14ed05647846563bfb43a526c7f2581ad475}
	REACT_INTERVAL=${REACT_INTERVAL:-2s}
	REACT_RUNS=${REACT_RUNS:-11}
	base_bin=
	if git -C "$ROOT" cat-file -e "$WATCH_BASE^{commit}" 2>>"$LOG"; then
		mkdir -p "$OUT/base-src"
		git -C "$ROOT" archive "$WATCH_BASE" | tar -x -C "$OUT/base-src"
		(cd "$OUT/base-src" && go build -o "$OUT/orch-hooks-base" ./cmd/orch-hooks) >>"$LOG" 2>&1 && base_bin=$OUT/orch-hooks-base
	fi
	go build -o "$OUT/reactlat" ./bench/reactlat
	rl() { "$OUT/reactlat" -C "$R/$1" -interval "$REACT_INTERVAL" -n "$REACT_RUNS" "${@:2}" >"$R/$1.tsv" 2>>"$LOG"; }
	rl new -orch "$ORCH"
	ORCH_WATCH_NOTIFY=0 rl poll -orch "$ORCH"
	[ -z "$base_bin" ] || rl base -orch "$base_bin"
	# med KIND VARIANT : "median min max n" of the samples of a kind
	med() { awk -v k="$1" '$1 == k {print $2}' "$R/$2.tsv" | sort -n | awk '{a[NR]=$1} END{m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m, a[1], a[NR], NR}'; }
	fig() { local m lo hi n; read -r m lo hi n < <(med "$1" "$2"); calc '%.0f ms [%.0f–%.0f] (n=%d)' "$m, $lo, $hi, $n"; }
	vs() { # KIND VARIANT: the ratio of its median to the baseline's
		local m b
		m=$(med "$1" "$2" | cut -d' ' -f1)
		if [ -n "$base_bin" ]; then
			b=$(med "$1" base | cut -d' ' -f1)
			calc '×%.3f of interval-driven watch' "$m / $b"
		fi
	}
	for k in s2s e2e; do
		case $k in
		s2s) what="job done → next stage's command running" ;;
		e2e) what="enqueue → last of 3 instant stages done" ;;
		esac
		[ -z "$base_bin" ] || row "6 watch reacts" "$what; interval-driven watch (${WATCH_BASE:0:7}), --interval $REACT_INTERVAL" "$(fig $k base)" "baseline"
		row "6 watch reacts" "$what; notified (fsnotify), --interval $REACT_INTERVAL" "$(fig $k new)" "$(vs $k new)"
		row "6 watch reacts" "$what; ORCH_WATCH_NOTIFY=0 (poll every 1s), --interval $REACT_INTERVAL" "$(fig $k poll)" "$(vs $k poll)"
	done
	row "6 watch reacts" "notified, job done → next command, in parts" \
		"advance $(fig adv new); claim $(fig claim new); prep $(fig prep new)" \
		"advance: the monitor enqueues the next job; claim: watch dispatches, the new monitor starts and claims; prep: worktree, command start"
	[ -n "$base_bin" ] || row "6 watch reacts" "interval-driven baseline" "not built (commit $WATCH_BASE missing): see log" ""
fi

# ---- the table --------------------------------------------------------------
{
	printf '\norch-hooks benchmarks — %s, %s cores, %s, %s, %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" \
		"$(uname -r)" "$(go version | awk '{print $3}')" "$(git --version)"
	printf 'medians; ± stddev; [min–max]; hyperfine -N --warmup %s --runs %s unless stated\n\n' "$WARMUP" "$RUNS"
	printf '| section | case | figure | comparison (same run) |\n|---|---|---|---|\n'
	while IFS=$'\t' read -r a b c d; do printf '| %s | %s | %s | %s |\n' "$a" "$b" "$c" "$d"; done <"$TABLE"
}
