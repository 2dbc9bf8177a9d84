"""Who is calling: principals, and the authenticators that turn a credential into one.

The management API, the ingress (EventPolicy) and the console all ask the same question, "who
sent this?", through the one seam defined here. Each kind of credential (the local token, static
tokens, OIDC bearer tokens) is an :class:`Authenticator`; the app lists the ones configured, and
the first that recognises a token decides.
"""

from broker.auth.principal import Authenticator, Principal

__all__ = ["Authenticator", "Principal"]
