import HTTPTypes
import NIOCore
import ServeCore
import ServeWire

/// The simulator's control surface for the benchmark driver and the tests: HTTP/1.1 and JSON on
/// loopback.
///
/// - `GET /status`: nodes by phase, replicas by state (on the nodes not killed), per route-table version how many nodes
///   applied and hold it and when it first and last arrived, control-plane bytes (totals, and
///   per second over the last 10 s, per node too), reconnects, this process's CPU seconds.
/// - `GET /nodes`: each node's phase, table version, replicas and bytes.
/// - `POST /load {"app": A, "deployment": D, "per_replica": N}`: every replica of A/D reports N
///   running requests from its next heartbeat on (without app and deployment: every deployment).
/// - `POST /kill {"fraction": 0.1, "mode": "reset"|"silent"}` (or `"count": N`; `"offset": K`
///   picks other nodes): takes registered nodes out (`KillMode`), spread over the fleet; answers
///   their ids and the time.
/// - `POST /rejoin {}` (or `{"nodes": [ids]}`): brings killed nodes back.
/// - `POST /add {"nodes": N}`: starts N more nodes.
/// - `POST /heartbeat {"interval_ms": N}`: every node heartbeats every N ms from now on (0: the
///   interval the head gives).
enum ControlAPI {
    static func bind(fleet: SimFleet, host: String, port: Int) async throws -> HTTP1Server {
        try await HTTP1Server.bind(host: host, port: port, eventLoopGroup: fleet.group) { request, writer in
            let path = String((request.head.path ?? "/").prefix(while: { $0 != "?" }))
            let answer: (HTTPResponse.Status, JSONValue)
            do {
                let body = try await request.body.collect(upTo: 1 << 20)
                let text = String(buffer: body)
                let json = text.isEmpty ? JSONValue.object([:]) : try JSONValue.parse(text)
                answer = try Self.answer(fleet, request.head.method, path, json)
            } catch {
                answer = (.badRequest, ["error": .string("\(error)")])
            }
            try await writer.respond(
                HTTPResponse(status: answer.0, headerFields: [.contentType: "application/json"]),
                body: ByteBuffer(string: answer.1.jsonString() + "\n"))
        }
    }

    struct BadRequest: Error, CustomStringConvertible {
        var description: String
    }

    static func answer(_ fleet: SimFleet, _ method: HTTPRequest.Method, _ path: String, _ body: JSONValue) throws -> (HTTPResponse.Status, JSONValue) {
        switch (method, path) {
        case (.get, "/status"):
            return (.ok, fleet.statusJSON())
        case (.get, "/nodes"):
            return (.ok, fleet.nodesJSON())
        case (.post, "/load"):
            guard let perReplica = body["per_replica"]?.doubleValue, perReplica >= 0 else {
                throw BadRequest(description: "POST /load needs {\"app\": A, \"deployment\": D, \"per_replica\": N >= 0}")
            }
            let app = body["app"]?.stringValue
            let deployment = body["deployment"]?.stringValue
            guard (app == nil) == (deployment == nil) else {
                throw BadRequest(description: "name both app and deployment, or neither (every deployment)")
            }
            let id = app.flatMap { app in deployment.map { DeploymentID(app: app, name: $0) } }
            fleet.setLoad(id, perReplica: Int(perReplica))
            return (.ok, ["result": "ok", "per_replica": .number(perReplica)])
        case (.post, "/kill"):
            guard let mode = KillMode(rawValue: body["mode"]?.stringValue ?? "reset") else {
                throw BadRequest(description: "mode is reset or silent")
            }
            let fraction = body["fraction"]?.doubleValue
            let count = body["count"]?.doubleValue.map { Int($0) }
            guard fraction != nil || count != nil else { throw BadRequest(description: "POST /kill needs fraction or count") }
            let at = SimNode.unixMs
            let offset = body["offset"]?.doubleValue.map { Int($0) } ?? 0
            let killed = fleet.kill(fraction: fraction, count: count, offset: offset, mode: mode)
            return (.ok, ["killed": .array(killed.map { .string($0) }), "mode": .string(mode.rawValue), "at_unix_ms": .number(Double(at))])
        case (.post, "/rejoin"):
            let ids = body["nodes"]?.arrayValue.map { Set($0.compactMap(\.stringValue)) }
            let at = SimNode.unixMs
            return (.ok, ["rejoined": .array(fleet.rejoin(ids).map { .string($0) }), "at_unix_ms": .number(Double(at))])
        case (.post, "/add"):
            guard let count = body["nodes"]?.doubleValue, count >= 1 else { throw BadRequest(description: "POST /add needs {\"nodes\": N >= 1}") }
            return (.ok, ["added": .array(fleet.add(Int(count)).map { .string($0) })])
        case (.post, "/heartbeat"):
            guard let ms = body["interval_ms"]?.doubleValue, ms >= 0 else {
                throw BadRequest(description: "POST /heartbeat needs {\"interval_ms\": N >= 0} (0: the head's interval)")
            }
            fleet.setHeartbeatInterval(milliseconds: Int(ms))
            return (.ok, ["heartbeat_interval_ms": .number(Double(fleet.heartbeatInterval.milliseconds))])
        default:
            return (.notFound, ["error": .string("no endpoint \(method) \(path); see GET /status, GET /nodes, POST /load, /kill, /rejoin, /add, /heartbeat")])
        }
    }
}
