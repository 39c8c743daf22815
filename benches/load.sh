#!/usr/bin/env bash
# Load benchmark: portcullis (token + live session + rate limit + identity injection) against
# nginx as a plain reverse proxy, both in front of the same echo upstream, loaded in turn by
# wrk on this machine. Also: the upstream alone, /verify, logins next to the bare argon2id
# rate, proxied p99 during a login storm, and RSS and login/verify latency with 100k and 1M
# accounts. Binds only to 127.0.0.1 and stops everything it started.
#
#   bash benches/load.sh            # full run (10 s x 3 rounds, 100k and 1M accounts), ~15 min
#   bash benches/load.sh --quick    # CI smoke run (3 s x 1 round, 20k accounts), ~3 min
#
# Knobs (environment): DURATION (s), ROUNDS, CONNS (wrk connections), USERS (account counts).
# Installs cmake, nginx and wrk from Debian when missing. Figures: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--quick" ]; then
  DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}; USERS=${USERS:-20000}
else
  DURATION=${DURATION:-10}; ROUNDS=${ROUNDS:-3}; USERS=${USERS:-"100000 1000000"}
fi
CONNS=${CONNS:-64}
CORES=$(nproc)

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update && apt-get install -y --no-install-recommends "${need[@]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin portcullis --example echo_upstream --example loadtool
BIN=target/release/portcullis
TOOL=target/release/examples/loadtool

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
next_port=20000
# pick_port VAR: the next free port into VAR.
pick_port() {
  while port_in_use "$next_port"; do next_port=$((next_port + 1)); done
  printf -v "$1" '%s' "$next_port"
  next_port=$((next_port + 1))
}
wait_port() {
  for _ in $(seq 1 300); do port_in_use "$1" && return 0; sleep 0.1; done
  echo "load: nothing listens on port $1" >&2
  exit 1
}

# http METHOD PORT PATH BODY [HEADER...]: one request over bash's /dev/tcp; prints the response.
http() {
  local method=$1 port=$2 path=$3 body=$4
  shift 4
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  {
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n' "$method" "$path"
    for h in "$@"; do printf '%s\r\n' "$h"; done
    printf 'Content-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "${#body}" "$body"
  } >&3
  cat <&3
  exec 3<&-
}

pick_port UP; pick_port NGX; pick_port PC; pick_port ADMIN

# --- the upstream -------------------------------------------------------------------------
target/release/examples/echo_upstream "127.0.0.1:$UP" >/dev/null &
pids+=($!)
wait_port "$UP"

# --- nginx: plain reverse proxy, upstream keepalive, one worker per core ------------------
mkdir -p "$work/nginx/tmp" && chmod -R 777 "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $CORES;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  upstream echo { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      proxy_pass http://echo;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$NGX"

# --- portcullis ---------------------------------------------------------------------------
SERVICE_TOKEN=bench-service-token-0123456789
cat >"$work/portcullis.toml" <<EOF
data_dir = "$work/data"
[server]
listen = "127.0.0.1:$PC"
admin_listen = "127.0.0.1:$ADMIN"
threads = $CORES
[auth]
secret_key = "load-benchmark-key-load-benchmark-key-0123"
service_tokens = [{ name = "bench", token = "$SERVICE_TOKEN" }]
[rate_limits]
public_routes = 1000000000
private_routes = 1000000000
[log]
level = "warn"
[[routes]]
path = "/api"
upstream = "127.0.0.1:$UP"
auth = "required"
rate_limit = "1000000000/1second"
EOF
PC_PID=
start_portcullis() {
  "$BIN" serve --config "$work/portcullis.toml" >>"$work/portcullis.log" 2>&1 &
  PC_PID=$!
  pids+=("$PC_PID")
  wait_port "$PC"
  wait_port "$ADMIN"
}
stop_portcullis() {
  kill -TERM "$PC_PID"
  wait "$PC_PID" 2>/dev/null || true
}
rss_mb() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

PASSWORD='Bench-Horse-42!'
start_portcullis
http POST "$PC" /auth/register \
  "{\"email\":\"load@example.com\",\"nickname\":\"load\",\"password\":\"$PASSWORD\",\"passphrase\":\"bench passphrase words\"}" >/dev/null
login_body="{\"email\":\"load@example.com\",\"password\":\"$PASSWORD\"}"
TOKEN=$(http POST "$PC" /auth/login "$login_body" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
if [ -z "$TOKEN" ]; then
  echo "load: could not log in" >&2
  tail -20 "$work/portcullis.log" >&2
  exit 1
fi
sleep 1
RSS_IDLE=$(rss_mb "$PC_PID")

# wrk scripts: POST bodies for login and /verify.
cat >"$work/login.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$login_body'
EOF
cat >"$work/verify.lua" <<EOF
wrk.method = "POST"
wrk.headers["X-Service-Token"] = "$SERVICE_TOKEN"
wrk.headers["Authorization"] = "Bearer $TOKEN"
EOF

# run_wrk CONNS URL [wrk args...]: prints "rps p50_ms p99_ms non2xx".
run_wrk() {
  local conns=$1 url=$2
  shift 2
  local threads=$CORES
  [ "$conns" -lt "$threads" ] && threads=$conns
  wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency "$@" "$url" | awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
      return v
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, bad }'
}
AUTH="Authorization: Bearer $TOKEN"
avg() { awk '{ r += $1; a += $2; b += $3; n++ } END { printf "%.0f %.3f %.3f\n", r / n, a / n, b / n }'; }

echo "load: $CORES cores, $CONNS connections, ${DURATION}s x $ROUNDS rounds"
: >"$work/up"; : >"$work/ngx"; : >"$work/pc"
RSS_LOAD=0
for round in $(seq 1 "$ROUNDS"); do
  run_wrk "$CONNS" "http://127.0.0.1:$UP/api/hello" >>"$work/up"
  run_wrk "$CONNS" "http://127.0.0.1:$NGX/api/hello" >>"$work/ngx"
  ( sleep "$((DURATION / 2))"; rss_mb "$PC_PID" >"$work/rss_load" ) &
  out=$(run_wrk "$CONNS" "http://127.0.0.1:$PC/api/hello" -H "$AUTH")
  wait $!
  echo "$out" >>"$work/pc"
  RSS_LOAD=$(cat "$work/rss_load")
  if [ "$(echo "$out" | awk '{ print $4 }')" != "0" ]; then
    echo "load: portcullis answered non-2xx under load: $out" >&2
    exit 1
  fi
  echo "  round $round: upstream $(tail -1 "$work/up") | nginx $(tail -1 "$work/ngx") | portcullis $out"
done
read -r UP_RPS UP_P50 UP_P99 <<<"$(avg <"$work/up")"
read -r NGX_RPS NGX_P50 NGX_P99 <<<"$(avg <"$work/ngx")"
read -r PC_RPS PC_P50 PC_P99 <<<"$(avg <"$work/pc")"

read -r VERIFY_RPS VERIFY_P50 VERIFY_P99 _ <<<"$(run_wrk "$CONNS" "http://127.0.0.1:$PC/auth/verify" -s "$work/verify.lua")"

HASH_RATE=$("$TOOL" hash-rate --config "$work/portcullis.toml" --seconds "$DURATION" | awk '{ print $2 }')
read -r LOGIN_RPS LOGIN_P50 LOGIN_P99 LOGIN_BAD <<<"$(run_wrk "$((CORES * 2))" "http://127.0.0.1:$PC/auth/login" -s "$work/login.lua")"

# Proxied p99 while a login storm runs (the storm lasts the whole measurement).
storm_duration=$((DURATION + 2))
wrk -t1 -c"$((CORES * 4))" -d"${storm_duration}s" -s "$work/login.lua" "http://127.0.0.1:$PC/auth/login" >"$work/storm" &
storm=$!
sleep 1
read -r STORM_RPS STORM_P50 STORM_P99 _ <<<"$(run_wrk "$CONNS" "http://127.0.0.1:$PC/api/hello" -H "$AUTH")"
wait "$storm"
STORM_LOGINS=$(awk '/^Requests\/sec/ { print $2 }' "$work/storm")

# Latency at one connection: login and /verify, as the number of accounts grows.
latency_row() {
  local users=$1 login verify
  login=$(run_wrk 1 "http://127.0.0.1:$PC/auth/login" -s "$work/login.lua" | awk '{ print $2 }')
  verify=$(run_wrk 1 "http://127.0.0.1:$PC/auth/verify" -s "$work/verify.lua" | awk '{ print $2 }')
  echo "$users $(rss_mb "$PC_PID") $login $verify" >>"$work/growth"
}
: >"$work/growth"
latency_row 1
for n in $USERS; do
  stop_portcullis
  have=$(awk '{ n = $1 } END { print n }' "$work/growth")
  "$TOOL" seed --config "$work/portcullis.toml" --count "$((n - have))" | sed 's/^/  /'
  start_portcullis
  sleep 1
  latency_row "$n"
done

ratio=$(awk -v a="$PC_RPS" -v b="$NGX_RPS" 'BEGIN { printf "%.2f", a / b }')
p99_diff=$(awk -v a="$PC_P99" -v b="$NGX_P99" 'BEGIN { printf "%+.3f", a - b }')
login_share=$(awk -v a="$LOGIN_RPS" -v b="$HASH_RATE" 'BEGIN { printf "%.0f", 100 * a / b }')
storm_factor=$(awk -v a="$STORM_P99" -v b="$PC_P99" 'BEGIN { printf "%.2f", a / b }')

echo
echo "== summary: $(date -u +%Y-%m-%d), $CORES cores, wrk $CONNS connections, ${DURATION}s x $ROUNDS rounds"
printf '%-34s %10s %10s %10s\n' "" "req/s" "p50 ms" "p99 ms"
printf '%-34s %10s %10s %10s\n' "upstream direct" "$UP_RPS" "$UP_P50" "$UP_P99"
printf '%-34s %10s %10s %10s\n' "nginx, no authentication" "$NGX_RPS" "$NGX_P50" "$NGX_P99"
printf '%-34s %10s %10s %10s\n' "portcullis, token+session+limit" "$PC_RPS" "$PC_P50" "$PC_P99"
printf '%-34s %10s %10s %10s\n' "portcullis /verify" "$VERIFY_RPS" "$VERIFY_P50" "$VERIFY_P99"
printf '%-34s %10s %10s %10s\n' "portcullis during a login storm" "$STORM_RPS" "$STORM_P50" "$STORM_P99"
echo "portcullis/nginx throughput: $ratio   p99 difference: $p99_diff ms"
echo "logins: $LOGIN_RPS/s (p50 $LOGIN_P50 ms), bare argon2id: $HASH_RATE/s -> $login_share% of the hash rate"
echo "login storm ($STORM_LOGINS logins/s): proxied p99 x$storm_factor of idle"
echo "RSS: idle $RSS_IDLE MiB, under load $RSS_LOAD MiB"
printf '%-12s %10s %16s %17s\n' "accounts" "RSS MiB" "login p50 ms" "verify p50 ms"
while read -r users rss login verify; do
  printf '%-12s %10s %16s %17s\n' "$users" "$rss" "$login" "$verify"
done <"$work/growth"
