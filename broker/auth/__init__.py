"""Who is calling: principals, and the authenticators that turn a credential into one.

The management API, the ingress (EventPolicy) and the console all ask the same question, "who
sent this?", through the one seam defined here. Each kind of credential (the local token, static
tokens, OIDC bearer tokens) is an :class:`Authenticator`; the app lists the ones configured, and
the first that recognises a token decides.

Modules, one job each: :mod:`~broker.auth.principal` (the seam), :mod:`~broker.auth.local_token`
(the per-user admin token file), :mod:`~broker.auth.static_tokens` (the tokens file),
:mod:`~broker.auth.rbac` (roles, bindings, the pure decision), :mod:`~broker.auth.processes`
(which objects run a local process; the applied-by annotation) and :mod:`~broker.auth.setup`
(everything built from Settings: the one list of authenticators).
"""

from broker.auth.principal import Authenticator, Principal

__all__ = ["Authenticator", "Principal"]
