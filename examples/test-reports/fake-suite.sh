#!/bin/sh
# A stand-in for a test runner: writes a JUnit XML report to $1 the way pytest, nextest or
# Surefire would, with one test that always passes, one that fails on a gate's first
# attempt only (GATEHOUSE_ATTEMPT is the attempt number), and, when BROKEN=1, one that
# always fails. Exits 1 when a test failed, like a real runner.
out=$1
mkdir -p "$(dirname "$out")"
failed=0
flaky='<testcase classname="tests.test_net" name="test_retry_on_timeout" time="0.2"/>'
if [ "${GATEHOUSE_ATTEMPT:-1}" = 1 ]; then
  flaky='<testcase classname="tests.test_net" name="test_retry_on_timeout" time="0.2"><failure message="TimeoutError: the server did not answer in 100ms">trace</failure></testcase>'
  failed=1
fi
broken=''
if [ "${BROKEN:-0}" = 1 ]; then
  broken='<testcase classname="tests.test_math" name="test_divide" file="tests/test_math.py" line="12"><failure message="assert 7 / 2 == 3">trace</failure></testcase>'
  failed=1
fi
cat > "$out" <<XML
<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_math" name="test_add" time="0.001"/>
$flaky
$broken
</testsuite></testsuites>
XML
exit $failed
