// The gRPC side for Node: @grpc/grpc-js's service definition and client made from the generated (transport-free)
// definition, its errors as RilletErrors, and a session's call. Browsers never load this module.
import {
  type CallOptions, type ChannelCredentials, type Client, type ClientDuplexStream, type ClientOptions,
  type ClientReadableStream, type ClientUnaryCall, makeGenericClientConstructor, type Metadata, type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";

import {
  type GenerateRequest, type GenerateResponse, InferenceServiceDefinition, type ListModelsRequest,
  type ListModelsResponse, type SessionRequest, type SessionResponse, type SynthesizeRequest, type SynthesizeResponse,
} from "./gen/rillet/v1/inference_service";
import {
  type AbortRequest, type AbortResponse, ControlServiceDefinition, type CountTokensRequest, type CountTokensResponse,
  type DetokenizeRequest, type DetokenizeResponse, type GetLoadRequest, type GetLoadResponse,
  type GetServerInfoRequest, type GetServerInfoResponse, type TokenizeRequest, type TokenizeResponse,
  type WatchLoadRequest, type WatchLoadResponse,
} from "./gen/rillet/v1/control_service";
import { Status } from "./gen/google/rpc/status";
import { Code, RilletError, fromStatus } from "./errors";
import type { SessionCall, SessionEvents } from "./session";

interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

function method<Req, Res, ReqStream extends boolean, ResStream extends boolean>(m: {
  name: string; requestType: Codec<Req>; requestStream: ReqStream; responseType: Codec<Res>; responseStream: ResStream;
}, service: string = InferenceServiceDefinition.fullName) {
  return {
    path: `/${service}/${m.name}`,
    requestStream: m.requestStream,
    responseStream: m.responseStream,
    requestSerialize: (value: Req): Buffer => Buffer.from(m.requestType.encode(value).finish()),
    requestDeserialize: (value: Buffer): Req => m.requestType.decode(value),
    responseSerialize: (value: Res): Buffer => Buffer.from(m.responseType.encode(value).finish()),
    responseDeserialize: (value: Buffer): Res => m.responseType.decode(value),
  };
}

const methods = InferenceServiceDefinition.methods;

/** rillet.v1.InferenceService as @grpc/grpc-js defines services (for a server: `server.addService(...)`). */
export const InferenceServiceService = {
  session: method(methods.session),
  generate: method(methods.generate),
  synthesize: method(methods.synthesize),
  listModels: method(methods.listModels),
};

/** The generated-style @grpc/grpc-js client of rillet.v1.InferenceService (RilletClient.stub). */
export interface InferenceServiceClient extends Client {
  session(metadata?: Metadata, options?: Partial<CallOptions>): ClientDuplexStream<SessionRequest, SessionResponse>;
  generate(request: GenerateRequest, metadata?: Metadata, options?: Partial<CallOptions>):
    ClientReadableStream<GenerateResponse>;
  synthesize(request: SynthesizeRequest, metadata?: Metadata, options?: Partial<CallOptions>):
    ClientReadableStream<SynthesizeResponse>;
  listModels(request: ListModelsRequest, metadata: Metadata, options: Partial<CallOptions>,
    callback: (error: ServiceError | null, response: ListModelsResponse) => void): ClientUnaryCall;
}

/** The @grpc/grpc-js client class of `service`, typed as its interface `C`. */
function clientClass<C, S extends ServiceDefinition>(service: S, fullName: string) {
  return makeGenericClientConstructor(service, fullName) as unknown as {
    new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): C;
    service: S;
    serviceName: string;
  };
}

export const InferenceServiceClient = clientClass<InferenceServiceClient, typeof InferenceServiceService>(
  InferenceServiceService, InferenceServiceDefinition.fullName,
);

const control = ControlServiceDefinition.methods;
const controlMethod: typeof method = (m) => method(m, ControlServiceDefinition.fullName);

/** rillet.v1.ControlService as @grpc/grpc-js defines services. */
export const ControlServiceService = {
  getServerInfo: controlMethod(control.getServerInfo),
  getLoad: controlMethod(control.getLoad),
  watchLoad: controlMethod(control.watchLoad),
  tokenize: controlMethod(control.tokenize),
  detokenize: controlMethod(control.detokenize),
  countTokens: controlMethod(control.countTokens),
  abort: controlMethod(control.abort),
};

type Unary<Req, Res> = (request: Req, metadata: Metadata, options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void) => ClientUnaryCall;

/** The generated-style @grpc/grpc-js client of rillet.v1.ControlService (RilletClient.control). */
export interface ControlServiceClient extends Client {
  getServerInfo: Unary<GetServerInfoRequest, GetServerInfoResponse>;
  getLoad: Unary<GetLoadRequest, GetLoadResponse>;
  watchLoad(request: WatchLoadRequest, metadata?: Metadata, options?: Partial<CallOptions>):
    ClientReadableStream<WatchLoadResponse>;
  tokenize: Unary<TokenizeRequest, TokenizeResponse>;
  detokenize: Unary<DetokenizeRequest, DetokenizeResponse>;
  countTokens: Unary<CountTokensRequest, CountTokensResponse>;
  abort: Unary<AbortRequest, AbortResponse>;
}

export const ControlServiceClient = clientClass<ControlServiceClient, typeof ControlServiceService>(
  ControlServiceService, ControlServiceDefinition.fullName,
);

/** A RilletError from anything a grpc-js call throws (the `grpc-status-details-bin` trailer decoded); RilletErrors pass through. */
export function toRilletError(error: unknown): RilletError {
  if (error instanceof RilletError) return error;
  const service = error as Partial<ServiceError>;
  if (typeof service.code === "number") {
    const details = (service.metadata as Metadata | undefined)?.get("grpc-status-details-bin")[0];
    if (details instanceof Uint8Array) {
      return fromStatus(Status.decode(details));
    }
    return new RilletError(service.code as number as Code, service.details ?? String(error));
  }
  return new RilletError(Code.UNKNOWN, error instanceof Error ? error.message : String(error));
}

/** A session's call over a grpc-js bidirectional stream. */
export function grpcSessionCall(
  call: ClientDuplexStream<SessionRequest, SessionResponse>,
): (events: SessionEvents) => SessionCall {
  return (events) => {
    call.on("data", (msg: SessionResponse) => events.message(msg));
    call.on("error", (error) => events.end(toRilletError(error)));
    call.on("end", () => events.end(undefined));
    return { write: (msg) => call.write(msg), end: () => call.end(), cancel: () => call.cancel() };
  };
}
