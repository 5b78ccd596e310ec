"""The HTTP mode's OpenAPI document (`GET /openapi.json`): its routes, the statuses each can answer, and their bodies.

Written by hand, not derived by FastAPI: the routes read their bodies themselves (size limits before parsing), so
FastAPI would know neither the request bodies nor any status but 200. Built from the same constants the routes
use (status per error code, formats, content types, OpenAI's fields), so it can't drift from them silently;
tests/test_schemathesis.py checks every answer of a real server against it. The live WebSocket routes are not in
it (OpenAPI describes no WebSocket).
"""

from __future__ import annotations

from typing import Any

from audio import schema
from audio.openai_compat import EXTRA_FIELDS, MAX_INPUT_CHARS, RESPONSE_FORMATS, SPEECH_FIELDS, STREAM_FORMATS
from audio.output import encoders

CLIENT_GONE_DESCRIPTION = "the client disconnected before the answer (nginx's 'client closed'; nobody reads it)"


def _worker_error(codes: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {"code": {"type": "string", "enum": codes}, "message": {"type": "string"}},
            },
            # Set when a failure left the GPU unusable (out of memory): RunPod then replaces the worker.
            "refresh_worker": {"type": "boolean"},
        },
        "additionalProperties": False,
    }


def _openai_error(codes: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string"},
                    "type": {
                        "type": "string",
                        "enum": ["invalid_request_error", "rate_limit_exceeded", "server_error"],
                    },
                    "param": {"type": "null"},
                    "code": {"type": "string", "enum": codes},
                },
            }
        },
    }


def _errors(ref: str, statuses: dict[int, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, description in statuses.items():
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "required": False}}
        out[str(status)] = response
    return out


ERROR_STATUSES = {
    400: "invalid_input: the request is malformed, out of range, or asks a model for what it can't do",
    413: "invalid_input (a body over QWEN_TTS_MAX_REQUEST_BYTES) or payload_too_large (the result is too large)",
    429: "rate_limited: QWEN_TTS_CONCURRENCY requests run and QWEN_TTS_MAX_QUEUE wait; retry after Retry-After",
    500: "synthesis_failed or internal",
    502: "delivery_failed: the S3 upload failed",
    503: "model_unavailable: the model is not on the volume, the worker is still loading, or it failed to start",
}


REF = "#/components/schemas/{model}"
JOB_MODELS = (schema.SynthesisJob, schema.CreateVoiceJob, schema.VoiceIdJob, schema.ListVoicesJob)


def _job_schemas() -> dict[str, Any]:
    """The job contract's input as the validators that check it describe it (pydantic's JSON schemas), and the
    information actions."""
    out: dict[str, Any] = {}
    for model in JOB_MODELS:
        described = model.model_json_schema(ref_template=REF)
        out.update(described.pop("$defs", {}))
        out[model.__name__] = described
    out["InfoAction"] = {
        "type": "object",
        "required": ["action"],
        "additionalProperties": False,
        "properties": {"action": {"enum": list(schema.INFO_ACTIONS)}},
    }
    out["JobInput"] = {
        "anyOf": [{"$ref": REF.format(model=name)} for name in [*(m.__name__ for m in JOB_MODELS), "InfoAction"]]
    }
    return out


def _speech_body() -> dict[str, Any]:
    extra_types = {
        "language": {"type": "string"},
        "seed": {"type": "integer"},
        "ref_audio": {"type": "string", "description": "base64, a data: URI, an http(s) URL, or a saved voice"},
        "ref_text": {"type": "string"},
        "x_vector_only_mode": {"type": "boolean"},
        "task_type": {"type": "string", "enum": ["CustomVoice", "VoiceDesign", "Base"]},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 8192},
    }
    properties = {
        "model": {"type": "string", "description": "tts-1, gpt-4o-mini-tts, ..., or a worker model name"},
        "input": {"type": "string", "minLength": 1, "maxLength": MAX_INPUT_CHARS},
        "voice": {"type": "string"},
        "instructions": {"type": "string"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "mp3"},
        "speed": {"type": "number", "minimum": 0.25, "maximum": 4.0, "default": 1.0},
        "stream_format": {"type": "string", "enum": list(STREAM_FORMATS), "default": "audio"},
        **extra_types,
    }
    assert list(properties) == [*SPEECH_FIELDS, *EXTRA_FIELDS]  # one place to add a field: openai_compat
    return {"type": "object", "required": ["input"], "additionalProperties": False, "properties": properties}


def _audio_content() -> dict[str, Any]:
    types = sorted({*encoders.CONTENT_TYPES.values(), encoders.WAV_CONTENT_TYPE})
    content: dict[str, Any] = {t: {"schema": {"type": "string", "format": "binary"}} for t in types}
    # stream_format "sse": before OpenAPI 3.2 `schema` describes each event; `data` is one of OpenAI's speech events.
    event = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": ["speech.audio.delta", "speech.audio.done"]},
            "audio": {"type": "string", "contentEncoding": "base64"},
            "usage": {"type": "object"},
        },
    }
    content["text/event-stream"] = {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string", "contentMediaType": "application/json", "contentSchema": event}},
        }
    }
    return content


def document(title: str, codes: list[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP mode; `codes`: the error codes its routes answer."""
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "paths": {
            "/ping": {
                "get": {
                    "summary": "health: 204 while loading, 200 when ready or after a failed preload",
                    "responses": {
                        "200": {
                            "description": "ready, or failed with the reason its requests get",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                        "204": {"description": "the models are still loading"},
                        "503": {
                            "description": "unhealthy: a job left the GPU unusable; RunPod replaces the worker",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                    },
                }
            },
            "/run": {
                "post": {
                    "summary": "one job of the queue's contract, answered whole",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "description": "{'input': job} as on the queue, or the job itself",
                                    "anyOf": [
                                        {
                                            "type": "object",
                                            "required": ["input"],
                                            "properties": {"input": {"$ref": "#/components/schemas/JobInput"}},
                                        },
                                        {"$ref": "#/components/schemas/JobInput"},
                                    ],
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the job's result, or an information action's answer",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
                        },
                        **_errors("WorkerError", ERROR_STATUSES),
                        "499": {"description": CLIENT_GONE_DESCRIPTION},
                    },
                }
            },
            "/v1/audio/speech": {
                "post": {
                    "summary": "OpenAI's speech endpoint: the audio, streamed where the format allows",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SpeechRequest"}}},
                    },
                    "responses": {
                        "200": {"description": "the audio", "content": _audio_content()},
                        **_errors("OpenAIError", ERROR_STATUSES),
                        "499": {"description": CLIENT_GONE_DESCRIPTION},
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "the models present and OpenAI's speech model names",
                    "responses": {
                        "200": {
                            "description": "OpenAI's model list",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelList"}}},
                        }
                    },
                }
            },
            "/v1/audio/voices": {
                "get": {
                    "summary": "speakers per model kind, aliases, and the saved voices",
                    "responses": {
                        "200": {
                            "description": "the voices",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Voices"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "WorkerError": _worker_error(codes),
                "OpenAIError": _openai_error(codes),
                "SpeechRequest": _speech_body(),
                **_job_schemas(),
                "Result": {"type": "object", "not": {"required": ["error"]}},
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "additionalProperties": False,
                    "properties": {
                        "status": {"type": "string", "enum": ["ready", "failed", "unhealthy"]},
                        "reason": {"type": "string"},
                    },
                },
                "ModelList": {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "object", "created", "owned_by"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "object": {"const": "model"},
                                    "created": {"type": "integer"},
                                    "owned_by": {"type": "string"},
                                },
                            },
                        },
                    },
                },
                "Voices": {
                    "type": "object",
                    "required": ["saved"],
                    "properties": {"saved": {"type": "array", "items": {"type": "object"}}},
                },
            }
        },
    }
