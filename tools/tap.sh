# TAP helpers for the shell tests in tools/ (sourced, not run).
#   ok STATUS DESCRIPTION   "ok N - ..." when STATUS is 0, else "not ok N - ..."
#   diag                    prefixes stdin with "# "
#   bail MESSAGE...         "Bail out!" and exit 1
# $n counts the tests and $failed the failures, for the closing "1..$n".
n=0
failed=0
ok() {
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}
diag() { sed 's/^/# /'; }
bail() {
    echo "Bail out! $*"
    exit 1
}
