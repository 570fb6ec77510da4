import HTTPTypes
import NIOCore
import ServeCore
import ServeWire
import Testing

@testable import ServeProxy

/// The ingress against real HTTP/2 "workers" on loopback: one refuses every request as a
/// stopping replica does (503 with `serve-refused`, without reading the body), one echoes.
@Suite("Ingress failover")
struct IngressFailoverTests {
    /// A worker answering like a stopping replica, or echoing bodies, and an ingress routing
    /// to both; `body` gets the ingress's HTTP port.
    func withIngress(idempotent: Bool = false, _ body: (Int) async throws -> Void) async throws {
        let refusing = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { _, writer in
            var fields = HTTPFields()
            fields[ServeHeaders.refused] = "STOPPING"
            try await writer.respond(
                HTTPResponse(status: .serviceUnavailable, headerFields: fields),
                body: ByteBuffer(string: "stopping\n")
            )
        }
        let echoing = try await HTTP2Server.bind(host: "127.0.0.1", port: 0) { request, writer in
            let received = try await request.body.collect(upTo: 1 << 22)
            try await writer.respond(HTTPResponse(status: .ok), body: received)
        }
        let ingress = Ingress(token: "t")
        let id = DeploymentID(app: "a", name: "D")
        ingress.update(
            RouteTable(applications: [
                ApplicationRoute(
                    name: "a",
                    routePrefix: "/",
                    ingress: DeploymentRoute(
                        id: id,
                        maxOngoingRequests: 100,
                        maxQueuedRequests: -1,
                        replicas: [
                            ReplicaRoute(id: "D#refusing", nodeID: "n1", host: "127.0.0.1", port: refusing.port),
                            ReplicaRoute(id: "D#echoing", nodeID: "n2", host: "127.0.0.1", port: echoing.port),
                        ]
                    ),
                    idempotent: idempotent
                )
            ]),
            version: TableVersion(epoch: 1, sequence: 1)
        )
        let server = try await HTTPServer.bind(host: "127.0.0.1", port: 0) { request, writer in
            try await ingress.handle(request, writer)
        }
        do {
            try await body(server.port)
        } catch {
            await server.shutdown(gracePeriod: .seconds(1))
            throw error
        }
        await server.shutdown(gracePeriod: .seconds(1))
        await ingress.close()
        await refusing.shutdown(gracePeriod: .seconds(1))
        await echoing.shutdown(gracePeriod: .seconds(1))
    }

    func post(_ pool: HTTP1ConnectionPool, _ body: String) async throws -> (Int, String) {
        let response = try await pool.send(
            HTTPRequest(
                method: .post,
                scheme: "http",
                authority: "127.0.0.1",
                path: "/p",
                headerFields: [.contentLength: String(body.utf8.count)]
            ),
            body: ByteBuffer(string: body),
            timeout: .seconds(20)
        )
        return (response.head.status.code, String(buffer: try await response.body.collect(upTo: 1 << 22)))
    }

    @Test("a POST refused by a stopping replica reaches another one with its whole body")
    func refusedSmallBody() async throws {
        try await self.withIngress { port in
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
            for round in 0..<30 {
                let body = String(repeating: "\(round % 10)", count: 20_000)
                let (status, answer) = try await self.post(pool, body)
                #expect(status == 200)
                #expect(answer == body, "round \(round): \(answer.utf8.count) bytes back")
            }
            await pool.close()
        }
    }

    @Test("a body too large to keep is never sent twice: refused while streaming, it gets 503 with the reason")
    func refusedLargeBody() async throws {
        try await self.withIngress { port in
            let pool = HTTP1ConnectionPool(host: "127.0.0.1", port: port)
            var outcomes: Set<Int> = []
            for round in 0..<20 {
                // Over the 1 MiB a proxy keeps to send again.
                let body = String(repeating: "x", count: (1 << 20) + 1 + round)
                let (status, answer) = try await self.post(pool, body)
                outcomes.insert(status)
                if status == 200 {
                    #expect(answer == body, "round \(round): \(answer.utf8.count) bytes back")
                } else {
                    #expect(status == 503)
                    #expect(answer.contains("refused the request (STOPPING) while its body streamed"), "\(answer)")
                }
            }
            await pool.close()
            // Each round drew one of the two replicas: both outcomes were seen (a chance of
            // 2^-19 that one was drawn every time).
            #expect(outcomes == [200, 503])
        }
    }
}
