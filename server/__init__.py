"""The trio runtime of shopcast: the QUIC/HTTP3/WebTransport endpoint, the
HTTPS API, configuration, certificates, access tokens and the CLI.

The implementation lives in private modules; these are the public names.
"""

from shopcast.server._app import ServerApp, Started, run_server
from shopcast.server._certs import Certificate, CertificateError, CertificateStore
from shopcast.server._client import CertificateMismatch, open_webtransport
from shopcast.server._config import Config, ConfigError, load_config, render_config
from shopcast.server._moq_server import MoqServer, MoqSettings
from shopcast.server._relay import Broadcast, Relay, RelayError, RelayLimits, Track
from shopcast.server._tokens import ROLES, Claims, TokenAuthority, TokenError
from shopcast.server._webtransport import (
    SessionClosed,
    StreamReset,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportSession,
    WebTransportStream,
)

__all__ = [
    "ROLES",
    "Broadcast",
    "MoqServer",
    "MoqSettings",
    "Relay",
    "RelayError",
    "RelayLimits",
    "Track",
    "Certificate",
    "CertificateError",
    "CertificateMismatch",
    "CertificateStore",
    "Claims",
    "Config",
    "ConfigError",
    "ServerApp",
    "SessionClosed",
    "Started",
    "StreamReset",
    "TokenAuthority",
    "TokenError",
    "WebTransportReceiveStream",
    "WebTransportSendStream",
    "WebTransportSession",
    "WebTransportStream",
    "load_config",
    "open_webtransport",
    "render_config",
    "run_server",
]
