import HTTPTypes
import NIOConcurrencyHelpers
import ServeCore
import Testing

@testable import ServeProxy

@Suite("Route table")
struct RouteTableTests {
    private func table(_ prefixes: [String]) -> RouteTable {
        RouteTable(applications: prefixes.map { prefix in
            ApplicationRoute(
                name: prefix,
                routePrefix: prefix,
                ingress: DeploymentRoute(id: DeploymentID(app: prefix, name: "D"), maxOngoingRequests: 5, maxQueuedRequests: -1, replicas: [])
            )
        })
    }

    @Test("the longest matching route prefix wins, on path-segment boundaries", arguments: [
        ("/hello", "/hello"), ("/hello/world", "/hello"), ("/hello?x=1", "/hello"), ("/helloworld", "/"),
        ("/api/v1/models", "/api/v1"), ("/api/v2", "/api"), ("/", "/"), ("/other", "/"),
    ])
    func longestPrefix(path: String, expected: String) {
        let table = self.table(["/", "/hello", "/api", "/api/v1"])
        #expect(table.match(path)?.routePrefix == expected)
    }

    @Test("a table survives the message the head sends, each replica's multiplexed models with it")
    func modelsRoundTrip() throws {
        let replicas = [
            ReplicaRoute(id: "M#1", nodeID: "n1", host: "10.0.0.1", port: 7000, models: ["m1", "m7"]),
            ReplicaRoute(id: "M#2", nodeID: "n2", host: "10.0.0.2", port: 7000),
        ]
        let table = RouteTable(applications: [
            ApplicationRoute(
                name: "models", routePrefix: "/models",
                ingress: DeploymentRoute(id: DeploymentID(app: "models", name: "M"), maxOngoingRequests: 16, maxQueuedRequests: -1, replicas: replicas))
        ])
        let sent = table.update(version: TableVersion(epoch: 1, sequence: 2), proxyLocation: .everyNode, httpHost: "0.0.0.0", httpPort: 8000)
        var mirror = RouteTableMirror()
        #expect(try mirror.apply(try .init(serializedBytes: try sent.serializedBytes() as [UInt8])))
        #expect(mirror.table == table)
        #expect(mirror.table.applications.first?.ingress.replicas.first?.models == ["m1", "m7"])
    }

    @Test("no route without a catch-all app")
    func noRoute() {
        #expect(self.table(["/hello"]).match("/nope") == nil)
    }

    @Test("stripping the prefix leaves a path that starts with /", arguments: [
        ("/hello", "/hello", "/"), ("/hello", "/hello/x/y", "/x/y"), ("/hello", "/hello?q=1", "/?q=1"), ("/", "/a/b", "/a/b"),
    ])
    func strip(prefix: String, path: String, expected: String) {
        #expect(RouteTable.strip(prefix: prefix, from: path) == expected)
    }
}

@Suite("Deployment router")
struct DeploymentRouterTests {
    private func route(replicas: Int, maxOngoing: Int, maxQueued: Int, node: (Int) -> String = { _ in "n" }) -> DeploymentRoute {
        DeploymentRoute(
            id: DeploymentID(app: "a", name: "D"),
            maxOngoingRequests: maxOngoing,
            maxQueuedRequests: maxQueued,
            replicas: (0..<replicas).map { ReplicaRoute(id: "D#\($0)", nodeID: node($0), host: "127.0.0.1", port: 1) }
        )
    }

    @Test("never more than max_ongoing_requests per replica; then a bounded queue, then refusal")
    func capacityAndQueue() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 2, maxOngoing: 2, maxQueued: 1), localNode: nil)
        var taken: [String] = []
        for _ in 0..<4 { taken.append(try await router.acquire().id) }
        #expect(taken.filter { $0 == "D#0" }.count == 2)
        #expect(taken.filter { $0 == "D#1" }.count == 2)
        let waiting = Task { try await router.acquire().id }
        while router.waiting == 0 { await Task.yield() }
        await #expect(throws: RequestRouter.Failure.queueFull(1)) { _ = try await router.acquire() }
        router.release("D#1")
        #expect(try await waiting.value == "D#1")
    }

    @Test("waiting requests are served when replicas appear (scale from zero), and the first wait is a cold start")
    func waitsForReplicas() async throws {
        let cold = ManagedCounter()
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil, onColdWait: { cold.add() })
        let first = Task { try await router.acquire().id }
        let second = Task { try await router.acquire().id }
        while router.waiting < 2 { await Task.yield() }
        #expect(cold.value == 2)
        router.update(self.route(replicas: 2, maxOngoing: 1, maxQueued: -1), localNode: nil, version: 1)
        let ids = Set([try await first.value, try await second.value])
        #expect(ids == ["D#0", "D#1"])
    }

    @Test("a removed deployment fails its waiting requests")
    func closeFailsWaiters() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil)
        let waiter = Task { try await router.acquire() }
        while router.waiting == 0 { await Task.yield() }
        router.close()
        await #expect(throws: RequestRouter.Failure.gone) { _ = try await waiter.value }
    }

    @Test("a waiting request whose client leaves is taken out of the queue")
    func cancelledWaiter() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil)
        let waiter = Task { try await router.acquire() }
        while router.waiting == 0 { await Task.yield() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { _ = try await waiter.value }
        #expect(router.waiting == 0)
    }

    @Test("a deployment whose replicas keep failing to start fails waiting and new requests with the reason")
    func unavailable() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil)
        let waiter = Task { try await router.acquire() }
        while router.waiting == 0 { await Task.yield() }
        var failing = self.route(replicas: 0, maxOngoing: 1, maxQueued: -1)
        failing.unavailable = "exit 3"
        router.update(failing, localNode: nil, version: 1)
        await #expect(throws: RequestRouter.Failure.unavailable("exit 3")) { _ = try await waiter.value }
        await #expect(throws: RequestRouter.Failure.unavailable("exit 3")) { _ = try await router.acquire() }
        // A replica that runs after all takes requests again, the mark notwithstanding.
        var recovered = self.route(replicas: 1, maxOngoing: 1, maxQueued: -1)
        recovered.unavailable = "exit 3"
        router.update(recovered, localNode: nil, version: 2)
        #expect(try await router.acquire().id == "D#0")
    }

    @Test("a route from an older table update, delivered late, is ignored")
    func staleUpdate() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil, version: 1)
        router.update(self.route(replicas: 2, maxOngoing: 1, maxQueued: -1), localNode: nil, version: 3)
        router.update(self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil, version: 2)
        #expect(router.hasReplica(on: "n"))
        router.update(self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), localNode: nil, version: 4)
        #expect(!router.hasReplica(on: "n"))
    }

    @Test("a refusing replica is skipped on retry")
    func excluding() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 2, maxOngoing: 5, maxQueued: -1), localNode: nil)
        for _ in 0..<20 {
            let replica = try await router.acquire(excluding: ["D#0"])
            #expect(replica.id == "D#1")
            router.release(replica.id)
        }
        await #expect(throws: RequestRouter.Failure.exhausted) { _ = try await router.acquire(excluding: ["D#0", "D#1"]) }
    }

    @Test("replicas on the router's own node take requests first, the others when those are full")
    func localFirst() async throws {
        let router = DeploymentRouter(
            route: self.route(replicas: 4, maxOngoing: 2, maxQueued: -1, node: { $0 == 2 ? "here" : "there" }), localNode: "here")
        #expect(try await router.acquire().id == "D#2")
        #expect(try await router.acquire().id == "D#2")
        let third = try await router.acquire()
        #expect(third.nodeID == "there")
    }
}

/// A counter the router's callback bumps (from any thread).
final class ManagedCounter: Sendable {
    private let count = NIOLockedValueBox(0)
    func add() { self.count.withLockedValue { $0 += 1 } }
    var value: Int { self.count.withLockedValue { $0 } }
}

@Suite("Hop-by-hop fields")
struct HopByHopTests {
    @Test("Connection, the fields it names, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade and TE are dropped")
    func dropped() {
        var fields = HTTPFields()
        fields[.connection] = "close, X-Secret"
        fields[HTTPField.Name("x-secret")!] = "1"
        fields[HTTPField.Name("keep-alive")!] = "timeout=5"
        fields[HTTPField.Name("proxy-connection")!] = "keep-alive"
        fields[.transferEncoding] = "chunked"
        fields[.upgrade] = "h2c"
        fields[.te] = "gzip"
        fields[.accept] = "*/*"
        let kept = fields.removingConnectionSpecific
        #expect(kept.map(\.name.canonicalName) == ["accept"])
    }

    @Test("TE goes too, whatever it says (this proxy asks for nothing on the client's behalf)", arguments: [["trailers"], ["gzip, trailers"]])
    func te(values: [String]) {
        var fields = HTTPFields()
        for value in values { fields.append(HTTPField(name: .te, value: value)) }
        #expect(fields.removingConnectionSpecific.isEmpty)
    }
}
