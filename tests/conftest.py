from services.stack.supervisor import interrupt_on_hangup_or_sigterm


def pytest_runtest_setup(item) -> None:
    # The stacks and tritonservers the tests start run in sessions of their own: a closed terminal or a
    # SIGTERM must end the run as Ctrl-C does, tearing the fixtures down, not leave them running. Set before
    # every test, as one that serves in this process (services.runtime.server.run) resets them on its way out.
    interrupt_on_hangup_or_sigterm()
