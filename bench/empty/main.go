// Command empty does nothing: the floor hook of bench/run.sh execs it, so
// the floor is what any hook costs (a shell and an exec of a Go binary).
package main

func main() {}
