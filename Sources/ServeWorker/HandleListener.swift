import Foundation
import HTTPTypes
import Logging
import NIOCore
import Serve
import ServeCore
import ServeProxy
import ServeWire

extension Ingress: DeploymentCaller {}

/// The node's handle listener: how a process replica calls another deployment. It listens on
/// loopback only (`SERVE_HANDLE_URL`, given to every process replica with `SERVE_HANDLE_TOKEN`):
/// `METHOD /APP/DEPLOYMENT/REST?QUERY` with header `serve-handle-token` goes, as `/REST?QUERY`,
/// to a replica of that deployment through the node's routers, as a Swift handle's call does.
/// 401 without the token, 404 for an unknown application or deployment, otherwise the
/// ingress's answers.
final class HandleListener: Sendable {
    let token: String
    private let server: HTTPServer

    var url: String { "http://127.0.0.1:\(self.server.port)" }

    private init(token: String, server: HTTPServer) {
        self.token = token
        self.server = server
    }

    static func start(caller: any DeploymentCaller, logger: Logger) async throws -> HandleListener {
        let token = (0..<4).map { _ in String(UInt64.random(in: 0...UInt64.max), radix: 16) }.joined()
        let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0, logger: logger) { request, writer in
            try await Self.serve(request, writer, token: token, caller: caller)
        }
        return HandleListener(token: token, server: server)
    }

    func shutdown() async {
        await self.server.shutdown(gracePeriod: .seconds(1))
    }

    static func serve(_ request: HTTPServerRequest, _ writer: any HTTPResponseWriter, token: String, caller: any DeploymentCaller) async throws {
        guard ConstantTime.equals(request.head.headerFields[ServeHeaders.handleToken], token) else {
            return try await writer.respond(.unauthorized, text: "a handle call needs the header serve-handle-token: $SERVE_HANDLE_TOKEN\n")
        }
        guard let target = Target(request.head.path ?? "/") else {
            return try await writer.respond(.notFound, text: "call /APP/DEPLOYMENT/PATH (the application, the deployment, then the path it sees)\n")
        }
        var head = request.head
        head.path = target.rest
        head.headerFields[ServeHeaders.handleToken] = nil
        let forwarded = HTTPServerRequest(head: head, body: request.body, remoteAddress: request.remoteAddress, hasBody: request.hasBody)
        try await caller.call(app: target.app, deployment: target.deployment, forwarded, writer)
    }

    /// `/APP/DEPLOYMENT/REST?QUERY`, names percent-decoded.
    struct Target: Equatable {
        var app: String
        var deployment: String
        /// The path the deployment sees, with the query: always starts with "/".
        var rest: String

        init?(_ target: String) {
            let path = target.prefix(while: { $0 != "?" })
            let query = target.dropFirst(path.count)
            let segments = path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
            // "", APP, DEPLOYMENT[/REST]
            guard segments.count >= 3, segments[0].isEmpty else { return nil }
            let names = segments[2].split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            guard let app = String(segments[1]).removingPercentEncoding, let deployment = names.first.flatMap({ String($0).removingPercentEncoding }),
                !app.isEmpty, !deployment.isEmpty
            else { return nil }
            self.app = app
            self.deployment = deployment
            self.rest = "/" + (names.count > 1 ? names[1] : "") + query
        }
    }
}
