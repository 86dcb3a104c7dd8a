# Sourced by the bench runners: the relay's [listen] table and a wait for a port, written once.

# relay_listen BASE [RTSP_PORT]: relay.toml's [listen] table on 127.0.0.1, the ports BASE+0 to
# BASE+10 in the order of the design's port table (61000-61010); BASE 0 lets the kernel pick
# each (ephemeral). RTSP_PORT, when given, is the RTSP listener's instead.
relay_listen() {
  local base=$1 rtsp=${2:-} i=0 name port
  echo "[listen]"
  for name in ca credentials registration keepalive rtsps signaling stream_tls stream_tcp rtsp api api_tls; do
    port=0
    [ "$base" -gt 0 ] && port=$((base + i))
    [ "$name" = rtsp ] && [ -n "$rtsp" ] && port=$rtsp
    echo "$name = \"127.0.0.1:$port\""
    i=$((i + 1))
  done
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (10 s at most; 1 when nothing did).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
