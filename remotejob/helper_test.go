package remotejob_test

const helperEnv = "REMOTEJOB_HELPER"

func runHelper() int { return 2 }
