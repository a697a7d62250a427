"""A chat-template renderer process for templates sent in requests (run as a script by template_sandbox.py).

Protocol, over stdin/stdout: frames of a 4-byte big-endian length and that many bytes of JSON
(ASCII-escaped). The worker first sends {"ready": true}; then for every job
{"template", "messages", "tools", "documents", "add_generation_prompt", "continue_final_message",
"kwargs"} it answers {"text": ...} or {"error": ..., "value_error": bool}. It renders with transformers'
`render_jinja_template` (the function `apply_chat_template` renders with, in its sandboxed Jinja
environment), with the tokenizer's special tokens already in "kwargs".

Invariants:
- Its address space is capped (RLIMIT_AS, argv[1] bytes) after start-up, so a template that builds
  huge strings fails with MemoryError instead of taking the server's memory.
- Each job arms `alarm(argv[3] + 2)` with the default SIGALRM action, so a render the server failed
  to kill (the server died, say) ends the process in the kernel even inside a long C call.
- A rendered text longer than argv[2] characters is answered as an error, not sent.
- End of stdin (the server closed the pipe or exited) ends the process; on Linux it also dies with
  its parent (PR_SET_PDEATHSIG).
- It imports no Pagoda code (it runs without the package on its path) and writes nothing but frames
  on its stdout (anything printed goes to stderr).
"""

import json
import math
import os
import signal
import struct
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # this folder shadows nothing


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _read(stream) -> dict | None:
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = struct.unpack(">I", header)
    return json.loads(stream.read(size))


def _write(stream, obj: dict) -> None:
    data = json.dumps(obj).encode("ascii")
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _render(render_jinja_template, job: dict) -> str:
    kwargs = dict(job.get("kwargs") or {})
    for key in ("conversations", "chat_template", "return_assistant_tokens_mask", "tools", "documents",
                "add_generation_prompt", "continue_final_message"):
        kwargs.pop(key, None)
    rendered, _ = render_jinja_template(
        conversations=[job["messages"]], tools=job.get("tools"), documents=job.get("documents"),
        chat_template=job["template"], add_generation_prompt=job["add_generation_prompt"],
        continue_final_message=job["continue_final_message"], **kwargs)
    return rendered[0]


def main() -> int:
    memory_bytes, max_chars, timeout_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the frames
    _die_with_parent()
    from transformers.utils.chat_template_utils import render_jinja_template

    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    stdin = sys.stdin.buffer
    _write(out, {"ready": True})
    while True:
        job = _read(stdin)
        if job is None:
            return 0
        signal.alarm(int(math.ceil(timeout_s)) + 2)
        try:
            text = _render(render_jinja_template, job)
            if len(text) > max_chars:
                reply = {"error": f"the rendered prompt has {len(text)} characters, more than the {max_chars} that "
                                  "can fit in the model's context", "value_error": True}
            else:
                reply = {"text": text}
        except MemoryError:
            reply = {"error": f"the chat template used more than {memory_bytes >> 20} MiB of memory",
                     "value_error": True}
        except ValueError as exc:
            reply = {"error": str(exc), "value_error": True}
        except Exception as exc:  # noqa: BLE001 - jinja2 errors, raise_exception(), ...
            reply = {"error": f"{type(exc).__name__}: {exc}", "value_error": False}
        finally:
            signal.alarm(0)
        _write(out, reply)


if __name__ == "__main__":
    sys.exit(main())
