module handoff.example/go-server

go 1.19
