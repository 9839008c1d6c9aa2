"""The protocol adapters: HTTP (FastAPI glue, access control) and one connection class per WebSocket protocol
(``/v1/audio/stream``, OpenAI Realtime, Deepgram's ``/v1/listen``). They speak to the Ray-free core
(``deployments.speech``) and are served by the Ingress deployment."""
