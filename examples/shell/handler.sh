#!/bin/sh
# One HTTP request on stdin/stdout (inetd style): systemd-socket-activate --inetd runs this
# once per connection, with the accepted connection as stdin and stdout.

# Request line, e.g. "GET /slow HTTP/1.1\r"; then headers up to the empty line (all of the
# request is read, so closing the connection afterwards sends no RST).
cr=$(printf '\r')
IFS=' ' read -r method path version || exit 0
while IFS= read -r header; do
    case $header in '' | "$cr") break ;; esac
done

case $path in
/slow)
    sleep 1 # a request that takes a second: reload while it runs, it still completes
    body="Slow hello from sh, generation $HANDOFF_GENERATION (pid $SERVER_PID)" ;;
*)
    body="Hello from sh, generation $HANDOFF_GENERATION (pid $SERVER_PID)" ;;
esac

# One request per connection: "Connection: close", and the length of the body plus newline.
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n'
printf 'Content-Length: %d\r\nConnection: close\r\n\r\n%s\n' "$((${#body} + 1))" "$body"
