"""What the app and the ``haruhi`` commands do, without any UI: chat sessions, memory, exports, models,
the job launcher. Built on :mod:`haruhi_tui.core` and :mod:`haruhi_tui.store`; never imports the app,
the trainer or the converter (jobs are started through their command lines)."""
