//go:build !race

package querylog

const raceEnabled = false
