"""Fork server for the SIGKILL test: pay the torch import once, then fork a fresh training process per run.

Reads one JSON list of tinytrain.py arguments per stdin line, forks a child that runs
``tinytrain.main(args)`` (it prints "ready PID STEP" and "done STEP"), waits for it and prints
"exit PID CODE" (CODE = -signal when killed). Starting a fresh interpreter per run costs seconds of
imports on a busy machine; a fork is a real, separate process that can be SIGKILLed all the same.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
from tinytrain import TinyNet, main

if __name__ == "__main__":
    torch.set_num_threads(1)  # also keeps the server free of OpenMP worker threads before fork()
    warm = TinyNet()
    torch.optim.SGD(warm.parameters(), lr=0.1)  # the first optimizer imports torch._dynamo (slow)
    warm(torch.randn(2, 3, 8, 8)).sum().backward()
    print("server ready", flush=True)
    for line in sys.stdin:
        args = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                main(args)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print("exit", pid, code, flush=True)
