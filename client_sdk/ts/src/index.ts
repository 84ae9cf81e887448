// @rillet/client: a TypeScript client for Rillet over @grpc/grpc-js, with the generated rillet.v1 types.
export { type CallOptions, type ClientOptions, RilletClient, WEIGHTED_ROUND_ROBIN, serviceConfig } from "./client";
export {
  AbortRequest, AbortResponse, AllRequests, ControlServiceClient, ControlServiceService, CountTokensRequest,
  CountTokensResponse, DetokenizeRequest, DetokenizeResponse, EngineInfo, EngineLoad, GetServerInfoResponse,
  ServerLimits, ServerLoad, TokenizeRequest, TokenizeResponse,
} from "./gen/rillet/v1/control_service";
export { Priority } from "./gen/rillet/v1/common";
export { ProtocolError, RilletError, fromStatus, toRilletError } from "./errors";
export { type RequestOptions, Session, SessionRequestHandle } from "./session";
export { AudioEncoding, AudioChunk, SynthesizeParams } from "./gen/rillet/v1/speech";
export { FinishReason, Finished, Timings, TraceContext, Usage } from "./gen/rillet/v1/common";
export { ChatMessage, ChatPrompt, GenerateParams, SamplingParams, TokenDelta } from "./gen/rillet/v1/generation";
export {
  type DeepPartial, GenerateRequest, GenerateResponse, InferenceServiceClient, InferenceServiceService, Model,
  Model_Kind, SessionRequest, SessionResponse, StartGenerate, StartSynthesize, SynthesizeRequest, SynthesizeResponse,
} from "./gen/rillet/v1/inference_service";
export { ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
export { Status } from "./gen/google/rpc/status";
