module example.com/go-unmodified

go 1.19
