#!/usr/bin/env bash
# Load figures of issue 12 (item 6), in one command, through the real
# `ci-server` binary over HTTP on 127.0.0.1.
#
# What it measures (printed at the end as one Markdown table, with targets and
# whether each is met):
#   - a store of N runs made by the server itself: a bare repository with one
#     commit, the server started on it (`--initial none`, SQLite store, the
#     bundled simulator answering at once), then N commits written with
#     `git fast-import` on a side ref and revealed by ONE update of `main`.
#     From that burst: ref update -> first run queued (on GET /events), time
#     until all N runs are finished (commits per second end to end), the
#     server's peak resident set during the burst (VmHWM) and its resident set
#     1 s after the last run finished (VmRSS), both from /proc/PID/status of
#     the ci-server process (the simulator is a separate process, not counted);
#   - wrk (default -t2 -c16 -d8s, keep-alive, loopback) on GET /runs?limit=50,
#     a page near the end by offset (offset=n-60) and by cursor (`next` of the
#     page at offset n-110 passed as `after`; "n/a" when the build has no
#     cursor), GET /run/{10-digit prefix} with a different run on each request
#     (prefixes of every run, read from GET /runs, in shuffled order), and the
#     filtered listings status=success and branch=main: requests per second
#     and latency percentiles;
#   - the same listings again while commits flow on `main` at about 100 a
#     second (one commit every FLOW_MS ms; "reported, not judged");
#   - ref update -> run queued (GET /events), SAMPLES samples on `main` of
#     that repository, each run left to finish before the next sample;
#   - the same on a second repository with BRANCHES branches over
#     BRANCH_COMMITS commits (a linear `main`, each other branch one commit
#     forked from it, refs packed), a fresh store, the branch tips built at
#     start; one new commit on one branch per sample (branches spread over all
#     of them); the server's VmRSS after the samples.
# Timing that needs precision (ref update -> event, the burst) is done by a
# small Rust driver, benches/src/bin/load.rs (built here in release mode);
# wrk's Lua script is benches/load/wrk.lua.
#
# How to run, from anywhere (as root when wrk is missing: it is installed with
# apt-get):
#   benches/load.sh                      # the real figures (N=100000)
#   N=2000 BRANCHES=100 benches/load.sh  # a quick try (about 1.5 minutes)
# The table goes to stdout, progress to stderr:
#   benches/load.sh | tee load-results.md
#
# Knobs (environment):
#   N               runs in the store, = commits of the burst (default 100000)
#   BRANCHES        branches of the second repository (default 1000)
#   BRANCH_COMMITS  commits of the second repository (default: N)
#   SAMPLES         ref update -> run queued samples per repository (default 30)
#   WRK_THREADS, WRK_CONNECTIONS, WRK_DURATION   wrk's -t, -c, -d (2, 16, 8s)
#   FLOW_MS         interval between commits while commits flow (default 10)
#   SIM_ARGS        the bundled simulator's arguments
#                   (default "--no-crash --seed 1 --lint-ms 0 --build-ms 0 --test-ms 0")
#   SERVER_LOG      RUST_LOG for the server and its simulator (default: unset,
#                   so the server's own default, info)
#   RUN_TIMEOUT     seconds to wait for runs to finish (default 600 + N/50)
#   LOAD_TMPDIR     where the temporary directory goes (default: $TMPDIR or /tmp);
#                   it needs about 1 GB for N=100000
#   KEEP_TMP=1      keep the temporary directory (repositories, stores, logs)
#   SKIP_BUILD=1    use the release binaries already built
#   CARGO_TARGET_DIR  where cargo builds (default: target/ of this workspace)
#
# How long: with N=100000 on 2 cores about 7 minutes once built (measured
# 2026-11-28: the burst of 100,000 runs took 5 of them, at about 330 commits
# per second; 8 s per wrk row, 12 rows), plus the release build (about 15
# minutes from scratch on 2 cores, seconds when up to date). N=2000: about 1.5
# minutes once built (the 11 wrk runs of 8 s make most of it).
#
# Everything it starts (servers in their own process group, the driver, wrk)
# is stopped and the temporary directory removed on exit, Ctrl-C included.

set -euo pipefail

N=${N:-100000}
BRANCHES=${BRANCHES:-1000}
BRANCH_COMMITS=${BRANCH_COMMITS:-$N}
SAMPLES=${SAMPLES:-30}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-16}
WRK_DURATION=${WRK_DURATION:-8s}
FLOW_MS=${FLOW_MS:-10}
SIM_ARGS=${SIM_ARGS:---no-crash --seed 1 --lint-ms 0 --build-ms 0 --test-ms 0}
RUN_TIMEOUT=${RUN_TIMEOUT:-$((600 + N / 50))}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
bin=$CARGO_TARGET_DIR/release
lua=$here/load/wrk.lua

started=$SECONDS
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
work=""
server_pid=""
flow_pid=""
url=""

log() { printf '[load.sh %4ds] %s\n' "$((SECONDS - started))" "$*" >&2; }
die() {
    printf 'load.sh: error: %s\n' "$*" >&2
    exit 1
}

# Stops the server started last: SIGTERM to its process group (the server and
# its simulators), SIGKILL after 10 s.
stop_server() {
    [[ -n $server_pid ]] || return 0
    local pid=$server_pid
    server_pid=""
    kill -TERM -- "-$pid" 2>/dev/null || true
    local _i
    for _i in $(seq 100); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $flow_pid ]]; then
        kill -TERM "$flow_pid" 2>/dev/null || true
        wait "$flow_pid" 2>/dev/null || true
    fi
    stop_server
    if [[ -n $work && -d $work ]]; then
        if [[ ${KEEP_TMP:-} == 1 ]]; then
            log "kept $work"
        else
            rm -rf "$work"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Checks that knob $1 (value $2) is a whole number of at least $3.
check_count() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < $3)); then
        die "$1 must be a whole number of at least $3 (got '$2')"
    fi
}
check_count N "$N" 200
check_count BRANCHES "$BRANCHES" 1
check_count BRANCH_COMMITS "$BRANCH_COMMITS" "$BRANCHES"
check_count SAMPLES "$SAMPLES" 1
check_count FLOW_MS "$FLOW_MS" 1
check_count RUN_TIMEOUT "$RUN_TIMEOUT" 1

# --- tools -------------------------------------------------------------------
for tool in git awk curl setsid cargo; do
    command -v "$tool" >/dev/null || die "$tool is needed and not installed"
done
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    ((EUID == 0)) || die "wrk is missing and installing it needs root (apt-get install -y wrk)"
    if ! { apt-get update >&2 && apt-get install -y wrk >&2; }; then
        die "installing wrk with apt-get failed"
    fi
fi

# --- build -------------------------------------------------------------------
if [[ ${SKIP_BUILD:-} != 1 ]]; then
    log "building the release binaries in $CARGO_TARGET_DIR"
    (cd "$root" && cargo build --release -p ci-server -p step-runner-sim >&2) ||
        die "cargo build of ci-server and step-runner-sim failed"
    # Separately: the driver's package enables test features of ci-engine that
    # must not end up in the server measured.
    (cd "$root" && cargo build --release -p benches --bin load >&2) ||
        die "cargo build of the load driver failed"
fi
for b in ci-server load; do
    [[ -x $bin/$b ]] || die "$bin/$b is missing (build it, or unset SKIP_BUILD)"
done

# --- temporary directory -----------------------------------------------------
parent=${LOAD_TMPDIR:-${TMPDIR:-/tmp}}
free_kb=$(df -Pk "$parent" | awk 'NR == 2 { print $4 }')
need_kb=$((500000 + (N + BRANCH_COMMITS) * 8))
((free_kb >= need_kb)) ||
    die "$parent has $((free_kb / 1024)) MiB free; this run needs about $((need_kb / 1024)) MiB (set LOAD_TMPDIR)"
work=$(mktemp -d "$parent/ci-load.XXXXXX")
log "working in $work"

# git with no user or system configuration, on the repository $1 (a bare one).
git_in() {
    local dir=$1
    shift
    GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_DIR=$dir git "$@"
}

# Prints a `git fast-import` stream of $1 commits on ref $2, the first a child
# of commit $3 (none when empty); commit times from $4 on, one second apart.
linear_stream() {
    awk -v n="$1" -v ref="$2" -v parent="$3" -v t0="$4" 'BEGIN {
        for (i = 1; i <= n; i++) {
            msg = "load commit " i "\n"
            printf "commit %s\ncommitter Load <load@example.invalid> %d +0000\ndata %d\n%s", ref, t0 + i, length(msg), msg
            if (i == 1 && parent != "") printf "from %s\n", parent
            printf "\n"
        }
    }'
}

# Prints a `git fast-import` stream of $1 commits over $2 branches: `main`
# linear, and branches topic-00001 ... each one commit forked from `main`, their
# fork points spread evenly along it.
branchy_stream() {
    awk -v total="$1" -v branches="$2" 'BEGIN {
        topics = branches - 1
        mainline = total - topics
        t = 1600000000
        next_topic = 1
        for (m = 1; m <= mainline; m++) {
            msg = "load commit " m " on main\n"
            printf "commit refs/heads/main\nmark :%d\ncommitter Load <load@example.invalid> %d +0000\ndata %d\n%s\n", m, ++t, length(msg), msg
            while (next_topic <= topics && int(next_topic * mainline / (topics + 1)) <= m) {
                name = sprintf("topic-%05d", next_topic)
                msg = "load commit on " name "\n"
                printf "commit refs/heads/%s\ncommitter Load <load@example.invalid> %d +0000\ndata %d\n%sfrom :%d\n\n", name, ++t, length(msg), msg, m
                next_topic++
            }
        }
    }'
}

# Starts ci-server on repository $1 with store $2 (log files named $3) and the
# extra arguments after them; sets server_pid and url.
start_server() {
    local repo=$1 db=$2 name=$3
    shift 3
    local out=$work/$name.out err=$work/$name.err
    if [[ -n ${SERVER_LOG:-} ]]; then
        export RUST_LOG=$SERVER_LOG
    fi
    : >"$out"
    # Its own process group, so that it and its simulators stop together.
    setsid "$bin/ci-server" "$repo" --listen 127.0.0.1:0 --db "$db" \
        --sim-args "$SIM_ARGS" "$@" </dev/null >"$out" 2>"$err" &
    server_pid=$!
    local deadline=$((SECONDS + 60)) addr=""
    while [[ -z $addr ]]; do
        addr=$(sed -n 's/^ci-server listening on \([0-9.:]*\) .*/\1/p' "$out")
        [[ -n $addr ]] && break
        kill -0 "$server_pid" 2>/dev/null ||
            die "the server exited at start; its log ($err) ends with: $(tail -n 5 "$err")"
        ((SECONDS < deadline)) || die "timed out after 60 s waiting for the server's startup line in $out"
        sleep 0.1
    done
    [[ $(ps -o pgid= -p "$server_pid" | tr -d ' ') == "$server_pid" ]] ||
        die "the server is not the leader of its own process group (setsid forked?)"
    url=http://$addr
    log "server $server_pid at $url ($name)"
}

# curl on loopback: no proxy, bounded.
fetch() { curl --noproxy '*' -sS --max-time 30 "$@"; }

# Runs the driver; its key=value lines go to stdout.
driver() { "$bin/load" "$@"; }

# The value of key $1 in the key=value lines $2 (empty when missing).
value_of() { sed -n "s/^$1=//p" <<<"$2" | head -n 1; }

# wrk on path $1, prefixes from file $2 when given (then $1 is the path in
# front of each prefix). Prints the LOADRESULT fields (key=value, one a line).
wrk_run() {
    local path=$1 prefixes=${2:-} target out
    if [[ -n $prefixes ]]; then
        target=$url/
        # One request by hand first: a prefix that does not answer 200 would
        # only show up in wrk's error counts.
        fetch -o /dev/null -f "$url$path$(head -n 1 "$prefixes")" ||
            die "GET $path$(head -n 1 "$prefixes") did not answer 200"
    else
        target=$url$path
        fetch -o /dev/null -f "$target" || die "GET $path did not answer 200"
    fi
    out=$(LOAD_PREFIXES=$prefixes LOAD_PATH_PREFIX=$path wrk -t"$WRK_THREADS" -c"$WRK_CONNECTIONS" \
        -d"$WRK_DURATION" --timeout 5s -s "$lua" "$target" 2>&1) || die "wrk failed on $path: $out"
    grep '^LOADRESULT ' <<<"$out" | head -n 1 | cut -d' ' -f2- | tr ' ' '\n' | grep . ||
        die "wrk printed no result line for $path: $out"
}

# Numbers with thousands separators, and comparisons, with awk.
thousands() {
    awk -v x="$1" 'BEGIN {
        s = sprintf("%.0f", x); out = ""
        while (length(s) > 3) { out = "," substr(s, length(s) - 2) out; s = substr(s, 1, length(s) - 3) }
        print s out
    }'
}
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
at_most() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
verdict() { if "$@"; then echo "yes"; else echo "**no**"; fi; }

rows=()
flow_rows=()
add_row() { rows+=("| $1 | $2 | $3 | $4 |"); }

# Measures one listing row: label $1, path $2, target rps $3, target p99 ms $4,
# prefixes file $5; appends it to `rows` (to `flow_rows` when judge is "no").
listing_row() {
    local label=$1 path=$2 rps_target=$3 p99_target=$4 prefixes=${5:-} judge=${6:-yes}
    log "wrk: $label"
    local r rps p50 p99 max errors met text
    r=$(wrk_run "$path" "$prefixes")
    rps=$(value_of rps "$r")
    p50=$(value_of p50_ms "$r")
    p99=$(value_of p99_ms "$r")
    max=$(value_of max_ms "$r")
    errors=$(awk -F= '/^errors_/ { s += $2 } END { print s + 0 }' <<<"$r")
    text="$(thousands "$rps") req/s; p99 $p99 ms (p50 $p50, max $max ms)"
    if ((errors > 0)); then
        text="$text; $errors errors ($(grep '^errors_' <<<"$r" | grep -v '=0$' | tr '\n' ' '))"
    fi
    log "  $text"
    if [[ $judge == yes ]]; then
        if ((errors == 0)) && at_least "$rps" "$rps_target" && at_most "$p99" "$p99_target"; then
            met=yes
        else
            met="**no**"
        fi
        add_row "$label" "≥ $(thousands "$rps_target") req/s, p99 ≤ $p99_target ms" "$text" "$met"
    else
        flow_rows+=("| $label | $text |")
    fi
}

# The listing rows; $1 = yes (judged) or no (reported only).
listing_rows() {
    local judge=$1
    listing_row "\`GET /runs?limit=50\`" "/runs?limit=50" 30000 5 "" "$judge"
    listing_row "\`GET /runs?limit=50&offset=$((n - 60))\` (near the end)" \
        "/runs?limit=50&offset=$((n - 60))" 30000 5 "" "$judge"
    if [[ -n $cursor_next ]]; then
        listing_row "\`GET /runs?limit=50&after=CURSOR\` (the same page by cursor)" \
            "/runs?limit=50&after=$cursor_next" 30000 5 "" "$judge"
    elif [[ $judge == yes ]]; then
        add_row "\`GET /runs?limit=50&after=CURSOR\` (the same page by cursor)" \
            "as the first page" "$cursor_note" "n/a"
    else
        flow_rows+=("| \`GET /runs?limit=50&after=CURSOR\` | $cursor_note |")
    fi
    listing_row "\`GET /run/{10-digit prefix}\`, a different run each request" \
        "/run/" 30000 3 "$work/prefixes.txt" "$judge"
    listing_row "\`GET /runs?limit=50&status=success\`" "/runs?limit=50&status=success" 30000 5 "" "$judge"
    listing_row "\`GET /runs?limit=50&branch=main\`" "/runs?limit=50&branch=main" 30000 5 "" "$judge"
}

# --- the repository and the burst --------------------------------------------
repo=$work/repo.git
git_in "$repo" init --bare -q "$repo"
linear_stream 1 refs/heads/main "" 1600000000 | git_in "$repo" fast-import --quiet
root_commit=$(git_in "$repo" rev-parse refs/heads/main)
start_server "$repo" "$work/runs.db" server-a --initial none

log "writing $N commits with git fast-import (on a side ref, not timed)"
linear_stream "$N" refs/load/burst "$root_commit" 1600000001 | git_in "$repo" fast-import --quiet
burst_tip=$(git_in "$repo" rev-parse refs/load/burst)

log "burst: moving main over $N commits in one ref update; waiting for every run (at most $RUN_TIMEOUT s)"
burst=$(driver burst --url "$url" --repo "$repo" --branch main --to "$burst_tip" --runs "$N" \
    --pid "$server_pid" --timeout "$RUN_TIMEOUT") || die "the burst failed (see above)"
n=$(value_of runs "$burst")
first_ms=$(value_of first_queued_ms "$burst")
first_created=$(value_of first_created_ms "$burst")
first_by=$(value_of first_queued_by "$burst")
finish_s=$(value_of finish_s "$burst")
per_s=$(value_of commits_per_s "$burst")
hwm=$(value_of hwm_mib "$burst")
rss_after=$(value_of rss_after_mib "$burst")
anon_after=$(value_of anon_after_mib "$burst")
log "burst: first queued after $first_created ms (events: $first_ms ms); $n runs finished after $finish_s s ($per_s/s); VmHWM $hwm MiB, VmRSS after $rss_after MiB"

# --- listings ----------------------------------------------------------------
log "reading the prefixes of all $n runs"
prefix_info=$(driver prefixes --url "$url" --len 10 --out "$work/prefixes.txt") ||
    die "reading the runs' prefixes failed"
log "  $(tr '\n' ' ' <<<"$prefix_info")"

cursor_info=$(driver cursor --url "$url" --offset "$((n - 110))" --limit 50) ||
    die "reading the page at offset $((n - 110)) failed"
cursor_next=""
cursor_note=""
case $(value_of cursor "$cursor_info") in
present) cursor_next=$(value_of next "$cursor_info") ;;
null) cursor_note="n/a (\`next\` was null on the page at offset $((n - 110)))" ;;
*) cursor_note="n/a (no cursor in this build)" ;;
esac

listing_rows yes

log "commits flowing on main, one every $FLOW_MS ms, while wrk runs the listings again"
flow_out=$work/flow.out
# The binary itself, not through a function: $! must be its own process id.
"$bin/load" trickle --repo "$repo" --branch main --every-ms "$FLOW_MS" >"$flow_out" &
flow_pid=$!
sleep 2
kill -0 "$flow_pid" 2>/dev/null || die "the commit loop stopped at once: $(cat "$flow_out")"
listing_rows no
kill -TERM "$flow_pid"
wait "$flow_pid" || die "the commit loop failed"
flow_pid=""
flow_info=$(cat "$flow_out")
flow_commits=$(value_of commits "$flow_info")
flow_rate="$(value_of commits "$flow_info") commits in $(value_of seconds "$flow_info") s, $(value_of per_s "$flow_info")/s"
log "  $flow_rate; waiting for their runs"
settled=$(driver settle --url "$url" --runs "$((n + flow_commits))" --timeout "$RUN_TIMEOUT") ||
    die "the runs of the flowing commits did not finish"
n_after=$(value_of runs "$settled")

# --- ref update -> run queued, one branch ------------------------------------
log "ref update -> run queued: $SAMPLES samples on main ($n_after runs in the store)"
one=$(driver latency --url "$url" --repo "$repo" --branches main --samples "$SAMPLES" \
    --timeout 120 --pid "$server_pid") || die "the one-branch samples failed"
stop_server

# --- ref update -> run queued, many branches ---------------------------------
log "writing $BRANCHES branches over $BRANCH_COMMITS commits (git fast-import, refs packed)"
branchy=$work/branchy.git
git_in "$branchy" init --bare -q "$branchy"
branchy_stream "$BRANCH_COMMITS" "$BRANCHES" | git_in "$branchy" fast-import --quiet
git_in "$branchy" pack-refs --all
start_server "$branchy" "$work/branchy.db" server-b
log "waiting for the $BRANCHES branch tips to be built"
driver settle --url "$url" --runs "$BRANCHES" --timeout "$RUN_TIMEOUT" >/dev/null ||
    die "the branch tips were not built"
log "ref update -> run queued: $SAMPLES samples over $BRANCHES branches"
many=$(driver latency --url "$url" --repo "$branchy" --branches all --samples "$SAMPLES" \
    --timeout 120 --pid "$server_pid") || die "the many-branch samples failed"
stop_server

# --- the table ---------------------------------------------------------------
add_row "commits per second end to end (SQLite, simulator answering at once)" "≥ 3,000" \
    "$(thousands "$per_s") commits/s ($n runs finished $finish_s s after one ref update)" \
    "$(verdict at_least "$per_s" 3000)"
add_row "server peak RSS (VmHWM) during the burst of $(thousands "$N") commits" "≤ 100 MB" \
    "$hwm MiB" "$(verdict at_most "$hwm" 100)"
add_row "server RSS 1 s after all $(thousands "$N") runs finished" "≤ 50 MB" \
    "$rss_after MiB (anonymous: $anon_after MiB)" "$(verdict at_most "$rss_after" 50)"
first_text="$first_created ms by the first run's \`created_at\`; $(awk -v m="$first_ms" 'BEGIN { printf "%.0f", m }') ms until \`GET /events\` showed it"
if [[ $first_by == reset ]]; then
    first_text="$first_text (a \`reset\`: the stream lost the first events)"
fi
add_row "a burst of $(thousands "$N") commits in one ref update → first run queued" "≤ 1 s" \
    "$first_text" "$(verdict at_most "$first_created" 1000)"
add_row "ref update → run queued, one branch ($(value_of samples "$one") samples, $(thousands "$n_after") runs in store)" \
    "p50 ≤ 10 ms" \
    "p50 $(value_of p50_ms "$one") ms (p90 $(value_of p90_ms "$one"), max $(value_of max_ms "$one") ms)" \
    "$(verdict at_most "$(value_of p50_ms "$one")" 10)"
add_row "the same, $(thousands "$BRANCHES") branches over $(thousands "$BRANCH_COMMITS") commits, packed refs ($(value_of samples "$many") samples)" \
    "p50 ≤ 10 ms" \
    "p50 $(value_of p50_ms "$many") ms (p90 $(value_of p90_ms "$many"), max $(value_of max_ms "$many") ms)" \
    "$(verdict at_most "$(value_of p50_ms "$many")" 10)"
add_row "server RSS then ($(thousands "$BRANCHES") branches, after the samples)" "≤ 50 MB" \
    "$(value_of rss_mib "$many") MiB (anonymous $(value_of anon_mib "$many"), VmHWM $(value_of hwm_mib "$many") MiB)" \
    "$(verdict at_most "$(value_of rss_mib "$many")" 50)"

commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null) ]] || commit="$commit (with uncommitted changes)"
elapsed=$((SECONDS - started))
echo "## Load figures, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit"
echo
echo "N=$N runs in the store; wrk -t$WRK_THREADS -c$WRK_CONNECTIONS -d$WRK_DURATION on 127.0.0.1;" \
    "simulator: $SIM_ARGS; server log: ${SERVER_LOG:-default (info)};" \
    "$(nproc) cores, load average $load_before at the start and $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
    "MiB = 2^20 bytes, and the MB of the targets are read as MiB."
echo
echo "| what | target | measured | met |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "While commits flow on main ($flow_rate; reported, not judged):"
echo
echo "| what | measured |"
echo "|---|---|"
printf '%s\n' "${flow_rows[@]}"
echo
echo "The script took $((elapsed / 60)) min $((elapsed % 60)) s (build included when it built)."
