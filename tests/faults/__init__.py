"""The fault suite: the real app and workers under a generated load while processes are
killed and services restarted, then a check that nothing acknowledged was lost, doubled or
misplaced. `harness.run_fault_suite` is the whole run; `python -m tests.faults` runs the long
version standalone and `test_faults.py` the short one in the test suite."""
