"""A client that speaks Streamlit's websocket protocol as a browser does (BackMsg and ForwardMsg protobufs over
/_stcore/stream), for testing what a scripted client can do to the server without the page's JavaScript."""

from __future__ import annotations

import time

from google.protobuf import text_format
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect


class StreamlitClient:
    """One websocket session. `session_id` re-attaches to an existing session, as a reconnecting browser does."""

    def __init__(self, base_url: str, session_id: str | None = None) -> None:
        url = base_url.replace("http://", "ws://").rstrip("/") + "/_stcore/stream"
        protocols = ["streamlit", "xsrf", session_id] if session_id else ["streamlit"]
        self.socket = connect(url, subprotocols=protocols, max_size=None, open_timeout=30)
        self.session_id: str | None = None
        self.messages: list[ForwardMsg] = []

    def __enter__(self) -> StreamlitClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.socket.close()

    def send(self, back: BackMsg) -> None:
        self.socket.send(back.SerializeToString())

    def rerun(self, query_string: str = "", widgets: list | None = None, fragment_id: str = "",
              timeout_s: float = 120.0) -> list[ForwardMsg]:
        """Run the script (or one fragment) and return what the server sent until it finished."""
        state = ClientState(query_string=query_string, fragment_id=fragment_id)
        state.widget_states.widgets.extend(widgets or [])
        self.send(BackMsg(rerun_script=state))
        return self.until(lambda msg: msg.WhichOneof("type") == "script_finished", timeout_s)

    def until(self, done, timeout_s: float) -> list[ForwardMsg]:
        received: list[ForwardMsg] = []
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the server did not finish the run"
            msg = ForwardMsg()
            msg.ParseFromString(self.socket.recv(timeout=remaining))
            if msg.WhichOneof("type") == "new_session" and msg.new_session.initialize.session_id:
                self.session_id = msg.new_session.initialize.session_id
            received.append(msg)
            self.messages.append(msg)
            if done(msg):
                return received

    def quiet_for(self, seconds: float) -> list[ForwardMsg]:
        """Whatever the server sends within `seconds` (an answer to a message that has none is nothing)."""
        received: list[ForwardMsg] = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                data = self.socket.recv(timeout=remaining)
            except TimeoutError:
                break
            msg = ForwardMsg()
            msg.ParseFromString(data)
            received.append(msg)
        return received


def text(messages: list[ForwardMsg]) -> str:
    """Everything the messages carry, as protobuf text: search it for labels, ids and media URLs."""
    return "\n".join(text_format.MessageToString(msg) for msg in messages)
