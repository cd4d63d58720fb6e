"""The runtime's bounds, torch-free (the CLI checks its arguments against them before importing
torch): how long joining may take, how far the clock may be dilated, how big a message may be; and the Ctrl-C flag."""

import threading

#: How long the device workers may take to start and join the group (s), unless told otherwise.
CONNECT_TIMEOUT_S = 60.0

#: How long a receiver thread waits for the *next* message (s). Idle is not an error: a notebook
#: may sit between cells for hours with its cluster started. A dead peer is found by the broken
#: connection and by the driver's process check; a caller's wait for a reply is bounded by its
#: own timeout; once a header has arrived, its payload is bounded by the group's timeout.
LISTEN_TIMEOUT_S = 30 * 24 * 3600.0

#: The largest clock dilation: the driver sends it in micro-units of an int64, and a device
#: second must stay a representable, finite wall time.
MAX_DILATION = 1e6

#: The most elements one message's payload may have (a hidden state of 8192 tokens x 576 is
#: 4.7 M; a full KV cache of 8192 tokens for 30 layers x 2 x 3 heads x 64 is 94 M): a header
#: announcing more is refused before anything is allocated.
MAX_PAYLOAD_ELEMENTS = 128 * 2**20


#: Set by the command line's Ctrl-C handler. The driver's waits check it (every 0.25 s) and raise
#: KeyboardInterrupt: the handler's own KeyboardInterrupt is lost when it lands inside a
#: ``__del__`` (Python only prints it), and the run would go on as if nothing had happened.
INTERRUPTED = threading.Event()
