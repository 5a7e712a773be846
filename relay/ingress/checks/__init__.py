"""The check behind each verification scheme, on the raw bytes of a request.

``relay.ingress.verify`` picks the check for each scheme a source names; here is how each one decides.
Every check raises VerificationFailed with a reason that says what is wrong and never shows a secret, an
expected signature or a computed digest. Signatures are compared as bytes with ``hmac.compare_digest``;
``keys`` are the scheme's secrets (any one may match, for rotation).
"""
