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
    private func route(replicas: Int, maxOngoing: Int, maxQueued: Int) -> DeploymentRoute {
        DeploymentRoute(
            id: DeploymentID(app: "a", name: "D"),
            maxOngoingRequests: maxOngoing,
            maxQueuedRequests: maxQueued,
            replicas: (0..<replicas).map { ReplicaRoute(id: "D#\($0)", nodeID: "n", host: "127.0.0.1", port: 1) }
        )
    }

    @Test("never more than max_ongoing_requests per replica; then a bounded queue, then refusal")
    func capacityAndQueue() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 2, maxOngoing: 2, maxQueued: 1))
        var taken: [String] = []
        for _ in 0..<4 { taken.append(try await router.acquire().id) }
        #expect(taken.filter { $0 == "D#0" }.count == 2)
        #expect(taken.filter { $0 == "D#1" }.count == 2)
        let waiting = Task { try await router.acquire().id }
        while await router.waiting == 0 { await Task.yield() }
        await #expect(throws: DeploymentRouter.RouterError.queueFull(1)) { _ = try await router.acquire() }
        await router.release("D#1")
        #expect(try await waiting.value == "D#1")
    }

    @Test("waiting requests are served when replicas appear (scale from zero)")
    func waitsForReplicas() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1))
        let first = Task { try await router.acquire().id }
        let second = Task { try await router.acquire().id }
        while await router.waiting < 2 { await Task.yield() }
        await router.update(self.route(replicas: 2, maxOngoing: 1, maxQueued: -1), sequence: 1)
        let ids = Set([try await first.value, try await second.value])
        #expect(ids == ["D#0", "D#1"])
    }

    @Test("a removed deployment fails its waiting requests")
    func closeFailsWaiters() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1))
        let waiter = Task { try await router.acquire() }
        while await router.waiting == 0 { await Task.yield() }
        await router.close()
        await #expect(throws: DeploymentRouter.RouterError.gone) { _ = try await waiter.value }
    }

    @Test("a deployment whose replicas keep failing to start fails waiting and new requests with the reason")
    func unavailable() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1))
        let waiter = Task { try await router.acquire() }
        while await router.waiting == 0 { await Task.yield() }
        var failing = self.route(replicas: 0, maxOngoing: 1, maxQueued: -1)
        failing.unavailable = "exit 3"
        await router.update(failing, sequence: 1)
        await #expect(throws: DeploymentRouter.RouterError.unavailable("exit 3")) { _ = try await waiter.value }
        await #expect(throws: DeploymentRouter.RouterError.unavailable("exit 3")) { _ = try await router.acquire() }
        // A replica that runs after all takes requests again, the mark notwithstanding.
        var recovered = self.route(replicas: 1, maxOngoing: 1, maxQueued: -1)
        recovered.unavailable = "exit 3"
        await router.update(recovered, sequence: 2)
        #expect(try await router.acquire().id == "D#0")
    }

    @Test("a route from an older table update, delivered late, is ignored")
    func staleUpdate() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), sequence: 1)
        await router.update(self.route(replicas: 2, maxOngoing: 1, maxQueued: -1), sequence: 3)
        await router.update(self.route(replicas: 0, maxOngoing: 1, maxQueued: -1), sequence: 2)
        #expect(await router.route.replicas.count == 2)
        await router.update(self.route(replicas: 1, maxOngoing: 1, maxQueued: -1), sequence: 4)
        #expect(await router.route.replicas.count == 1)
    }

    @Test("a refusing replica is skipped on retry")
    func excluding() async throws {
        let router = DeploymentRouter(route: self.route(replicas: 2, maxOngoing: 5, maxQueued: -1))
        for _ in 0..<20 {
            let replica = try await router.acquire(excluding: ["D#0"])
            #expect(replica.id == "D#1")
            await router.release(replica.id)
        }
    }
}
