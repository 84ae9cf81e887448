// The generated rillet.v1 messages (and the google.rpc ones errors carry) that both entry points export.
export { AudioEncoding, AudioChunk, SynthesizeParams, WordTiming } from "./gen/rillet/v1/speech";
export { FinishReason, Finished, Priority, SpokenText, Timings, TraceContext, Usage } from "./gen/rillet/v1/common";
export {
  ChatMessage, ChatPrompt, Choice, ConstraintKind, GenerateParams, JsonObject, SamplingParams, TokenDelta,
} from "./gen/rillet/v1/generation";
export {
  type DeepPartial, GenerateRequest, GenerateResponse, InferenceServiceDefinition, Model, Model_Kind, SessionRequest,
  SessionResponse, StartGenerate, StartSynthesize, SynthesizeRequest, SynthesizeResponse,
} from "./gen/rillet/v1/inference_service";
export {
  AbortRequest, AbortResponse, AllRequests, ControlServiceDefinition, CountTokensRequest, CountTokensResponse,
  DetokenizeRequest, DetokenizeResponse, EngineInfo, EngineLoad, GetLoadResponse, GetServerInfoResponse, ServerLimits,
  ServerLoad, TokenizeRequest, TokenizeResponse,
} from "./gen/rillet/v1/control_service";
export { ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
export { Status } from "./gen/google/rpc/status";
