#!/usr/bin/env bash
# Load benchmark: portcullis (token + live session + rate limit + identity injection) against
# nginx as a plain reverse proxy, both in front of the same echo upstream, loaded in turn by
# wrk on this machine. Also: the upstream alone, /verify, logins next to the bare argon2id
# rate, proxied p99 during a login storm, and RSS and login/verify latency with 100k and 1M
# accounts; then the same gateway on PostgreSQL (gated requests, /verify, logins and
# registrations next to the embedded backend's) and two PostgreSQL replicas behind nginx.
# Binds only to 127.0.0.1 and stops everything it started.
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
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
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
pick_port PG; pick_port PC2; pick_port ADMIN2; pick_port PC3; pick_port ADMIN3; pick_port NGX2

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
[limits]
registrations_per_ip = "1000000000/1second"
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

# Registrations with a new address each (per wrk thread, per request).
cat >"$work/register.lua" <<'EOF'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local id = string.format("%s-%d-%d", prefix, tid, n)
  local body = '{"email":"r' .. id .. '@example.com","nickname":"r' .. id .. '","password":"Bench-Horse-42!","passphrase":"bench passphrase words"}'
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
EOF
# register_rate PORT PREFIX: registrations/s and non-2xx (a prefix per run keeps addresses new).
register_rate() {
  sed "s/prefix, tid/\"$2\", tid/" "$work/register.lua" >"$work/register-$2.lua"
  run_wrk "$((CORES * 2))" "http://127.0.0.1:$1/auth/register" -s "$work/register-$2.lua" | awk '{ print $1, $4 }'
}

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
read -r REG_RPS REG_BAD <<<"$(register_rate "$PC" redb)"
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

# --- PostgreSQL: the same gateway on the replicated backend --------------------------------
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg=()
if [ "$(id -u)" = 0 ]; then as_pg=(runuser -u postgres --); fi
mkdir -p "$work/pg"
if [ ${#as_pg[@]} -gt 0 ]; then chown postgres "$work/pg"; chmod 755 "$work"; fi
"${as_pg[@]}" "$PGBIN/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$PGBIN/postgres" -D "$work/pg/data" -p "$PG" -k "$work/pg" -c listen_addresses=127.0.0.1 \
  -c max_connections=200 >"$work/pg.log" 2>&1 &
pids+=($!)
wait_port "$PG"
for _ in $(seq 1 100); do
  "$PGBIN/psql" -h 127.0.0.1 -p "$PG" -U postgres -qc "CREATE DATABASE bench" postgres 2>/dev/null && break
  sleep 0.1
done
DB_URL="postgres://postgres@127.0.0.1:$PG/bench?sslmode=disable"
# pg_config PUBLIC ADMIN NAME: the benchmark's config on PostgreSQL, on other ports.
pg_config() {
  sed -e "s#^data_dir = .*#data_dir = \"$work/$3\"#" -e "s#127.0.0.1:$PC\"#127.0.0.1:$1\"#" \
      -e "s#127.0.0.1:$ADMIN\"#127.0.0.1:$2\"#" "$work/portcullis.toml" >"$work/$3.toml"
  printf '[storage]\ndatabase = "%s"\n' "$DB_URL" >>"$work/$3.toml"
}
wait_ready() {
  for _ in $(seq 1 300); do
    http GET "$1" /readyz "" | head -1 | grep -q " 200 " && return 0
    sleep 0.1
  done
  echo "load: the PostgreSQL replica on $1 never became ready" >&2
  tail -20 "$work/portcullis.log" >&2
  exit 1
}
pg_config "$PC2" "$ADMIN2" pg-a
"$BIN" serve --config "$work/pg-a.toml" >>"$work/portcullis.log" 2>&1 &
pids+=($!)
wait_port "$PC2"; wait_ready "$ADMIN2"
http POST "$PC2" /auth/register \
  "{\"email\":\"load@example.com\",\"nickname\":\"load\",\"password\":\"$PASSWORD\",\"passphrase\":\"bench passphrase words\"}" >/dev/null
TOKEN2=$(http POST "$PC2" /auth/login "$login_body" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
if [ -z "$TOKEN2" ]; then
  echo "load: could not log in on PostgreSQL" >&2
  tail -20 "$work/portcullis.log" >&2
  exit 1
fi
AUTH2="Authorization: Bearer $TOKEN2"
sed "s#Bearer $TOKEN#Bearer $TOKEN2#" "$work/verify.lua" >"$work/verify2.lua"
: >"$work/pc-redb"; : >"$work/pc-pg"
for round in $(seq 1 "$ROUNDS"); do
  run_wrk "$CONNS" "http://127.0.0.1:$PC/api/hello" -H "$AUTH" >>"$work/pc-redb"
  out=$(run_wrk "$CONNS" "http://127.0.0.1:$PC2/api/hello" -H "$AUTH2")
  if [ "$(echo "$out" | awk '{ print $4 }')" != "0" ]; then
    echo "load: portcullis on PostgreSQL answered non-2xx under load: $out" >&2
    exit 1
  fi
  echo "$out" >>"$work/pc-pg"
  echo "  round $round: embedded $(tail -1 "$work/pc-redb") | PostgreSQL $out"
done
read -r REDB_RPS _ _ <<<"$(avg <"$work/pc-redb")"
read -r PG_RPS PG_P50 PG_P99 <<<"$(avg <"$work/pc-pg")"
read -r PG_VERIFY_RPS PG_VERIFY_P50 _ _ <<<"$(run_wrk "$CONNS" "http://127.0.0.1:$PC2/auth/verify" -s "$work/verify2.lua")"
read -r PG_LOGIN_RPS PG_LOGIN_P50 _ _ <<<"$(run_wrk "$((CORES * 2))" "http://127.0.0.1:$PC2/auth/login" -s "$work/login.lua")"
read -r PG_REG_RPS PG_REG_BAD <<<"$(register_rate "$PC2" pg)"

# Two replicas behind nginx, both on the same database.
pg_config "$PC3" "$ADMIN3" pg-b
"$BIN" serve --config "$work/pg-b.toml" >>"$work/portcullis.log" 2>&1 &
pids+=($!)
wait_port "$PC3"; wait_ready "$ADMIN3"
sed -e "s#server 127.0.0.1:$UP; keepalive 128;#server 127.0.0.1:$PC2; server 127.0.0.1:$PC3; keepalive 128;#" \
    -e "s#listen 127.0.0.1:$NGX;#listen 127.0.0.1:$NGX2;#" -e "s#nginx.pid#nginx2.pid#" \
    "$work/nginx/nginx.conf" >"$work/nginx/nginx2.conf"
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx2.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$NGX2"
read -r HA_RPS HA_P50 HA_P99 HA_BAD <<<"$(run_wrk "$CONNS" "http://127.0.0.1:$NGX2/api/hello" -H "$AUTH2")"

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
pg_ratio=$(awk -v a="$PG_RPS" -v b="$REDB_RPS" 'BEGIN { printf "%.2f", a / b }')
pg_login_share=$(awk -v a="$PG_LOGIN_RPS" -v b="$HASH_RATE" 'BEGIN { printf "%.0f", 100 * a / b }')
echo "PostgreSQL backend: gated $PG_RPS req/s (p99 $PG_P99 ms) = ${pg_ratio}x the embedded backend's $REDB_RPS in the same run"
echo "  /verify $PG_VERIFY_RPS req/s (embedded $VERIFY_RPS); logins $PG_LOGIN_RPS/s = $pg_login_share% of the hash rate"
echo "  registrations/s: embedded $REG_RPS (non-2xx $REG_BAD), PostgreSQL $PG_REG_RPS (non-2xx $PG_REG_BAD)"
echo "two PostgreSQL replicas behind nginx: $HA_RPS req/s gated (p99 $HA_P99 ms, non-2xx $HA_BAD)"
printf '%-12s %10s %16s %17s\n' "accounts" "RSS MiB" "login p50 ms" "verify p50 ms"
while read -r users rss login verify; do
  printf '%-12s %10s %16s %17s\n' "$users" "$rss" "$login" "$verify"
done <"$work/growth"
