module github.com/gantry-network/gantry/bench/refserver

go 1.22
