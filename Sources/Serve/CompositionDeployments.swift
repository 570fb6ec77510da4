import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Synchronization

/// `compose`: an ingress that calls other deployments of its application through handles, as
/// `user_config` says (it can change without a restart):
/// - `{calls: [A, B]}`: calls each with the request's method, path and body, all at once, and
///   answers one JSON object: each callee's status and answer (JSON when it answered JSON);
///   200 when every callee answered 2xx, else 502;
/// - `{chain: [A, B]}`: sends the request to A, A's answer as the body of a request to B, and
///   so on; answers the last one's response, or the first that is not 2xx;
/// - `{relay: A}`: streams A's response through as it comes (server-sent events, tokens).
/// `app` names another application to call into (default: its own). A request's
/// `serve_multiplexed_model_id` goes on to the callees (`DeploymentHandle.options`).
final class ComposeDeployment: Deployment {
    private let context: ReplicaContext
    private let userConfig: Mutex<JSONValue?>
    /// It only awaits its callees.
    var isNonBlocking: Bool { true }

    init(context: ReplicaContext) {
        self.context = context
        self.userConfig = Mutex(context.userConfig)
    }

    func reconfigure(userConfig: JSONValue?) async throws {
        self.userConfig.withLock { $0 = userConfig }
    }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        let config = self.userConfig.withLock { $0 }
        let app = config?["app"]?.stringValue
        func names(_ key: String) -> [String]? { config?[key]?.arrayValue?.compactMap(\.stringValue) }
        // A multiplexed model's request stays one through the handles (their option sets the header).
        let model = request.multiplexedModelID
        func callee(_ name: String) -> DeploymentHandle { self.context.handle(name, app: app).options(multiplexedModelID: model) }
        if let relay = config?["relay"]?.stringValue {
            let response = try await callee(relay).stream(Self.forward(request, body: nil))
            return .streaming(status: response.status, headers: response.headers, response.body)
        }
        let body = try await request.body.collect(upTo: 100 << 20)
        if let chain = names("chain"), !chain.isEmpty {
            var answer = ServeResponse()
            var input = body
            for name in chain {
                answer = try await callee(name).call(Self.forward(request, body: input))
                guard (200..<300).contains(answer.status.code) else { return answer }
                input = answer.body
            }
            return answer
        }
        guard let calls = names("calls"), !calls.isEmpty else {
            return .text("compose needs user_config with calls: [DEPLOYMENT, ...], chain: [...] or relay: DEPLOYMENT\n", status: .internalServerError)
        }
        let answers = try await withThrowingTaskGroup(of: (String, ServeResponse).self) { group in
            for name in calls {
                let handle = callee(name)
                group.addTask { (name, try await handle.call(Self.forward(request, body: body))) }
            }
            var answers: [String: ServeResponse] = [:]
            for try await (name, answer) in group { answers[name] = answer }
            return answers
        }
        var combined: [String: JSONValue] = [:]
        for (name, answer) in answers {
            let text = String(buffer: answer.body)
            let isJSON = answer.headers[.contentType]?.hasPrefix("application/json") ?? false
            combined[name] = .object([
                "status": .number(Double(answer.status.code)),
                "answer": isJSON ? ((try? JSONValue.parse(text)) ?? .string(text)) : .string(text),
            ])
        }
        let allAnswered = answers.values.allSatisfy { (200..<300).contains($0.status.code) }
        return .json(.object(combined), status: allAnswered ? .ok : .badGateway)
    }

    /// The request as a callee gets it: same method, path and content type; `body` whole (nil:
    /// none).
    static func forward(_ request: ServeRequest, body: ByteBuffer?) -> ServeRequest {
        var headers = HTTPFields()
        if let type = request.headers[.contentType] { headers[.contentType] = type }
        let sent = body.flatMap { $0.readableBytes > 0 || request.hasBody ? $0 : nil }
        return ServeRequest(method: request.method, path: request.path, headers: headers, body: sent)
    }
}

/// `tokens`: a model that streams its answer as server-sent events, one token every `ms`
/// milliseconds (`?n=` tokens, `?ms=`, or `user_config: {n:, ms:}`; 10 tokens every 100 ms by
/// default), then a last `done` event.
struct TokensDeployment: Deployment {
    let context: ReplicaContext
    var isNonBlocking: Bool { true }

    func handle(_ request: ServeRequest) async throws -> ServeResponse {
        let config = self.context.userConfig
        let count = request.query("n").flatMap(Int.init) ?? config?["n"]?.doubleValue.map { Int($0) } ?? 10
        let ms = request.query("ms").flatMap(Double.init) ?? config?["ms"]?.doubleValue ?? 100
        let prompt = request.query("prompt") ?? "hello"
        return .eventStream { events in
            for index in 0..<max(0, count) {
                if index > 0 { try await SleepDeployment.sleep(milliseconds: ms) }
                let token = JSONValue.object(["index": .number(Double(index)), "token": .string("\(prompt)-\(index)")])
                try await events.send(token.jsonString(), event: "token", id: String(index))
            }
            try await events.send("[DONE]", event: "done")
        }
    }
}
