import ServeCore
import ServeProxy
import Testing

@testable import ServeHead

@Suite("Route publisher")
struct RoutePublisherTests {
    private func table(replicas: Int) -> RouteTable {
        RouteTable(applications: [
            ApplicationRoute(
                name: "app", routePrefix: "/",
                ingress: DeploymentRoute(
                    id: DeploymentID(app: "app", name: "D"), maxOngoingRequests: 5, maxQueuedRequests: -1,
                    replicas: (0..<replicas).map { ReplicaRoute(id: "D#\($0)", nodeID: "n\($0)", host: "10.0.0.1", port: 7000 + $0) }))
        ])
    }

    private let settings = RoutePublisher.Settings(proxyLocation: .everyNode, httpHost: "0.0.0.0", httpPort: 8000)

    @Test("the first table goes out whole, later ones as changes from the one before; the same table again is not sent")
    func changes() throws {
        var publisher = RoutePublisher(epoch: 9)
        #expect(publisher.wholeTable() == nil)
        let firstMade = publisher.publish(self.table(replicas: 2), settings: self.settings, madeAtUnixMs: 1)
        let first = try #require(firstMade)
        #expect(first.version == TableVersion(epoch: 9, sequence: 1))
        #expect(first.update.baseSequence == 0 && first.update.applications.count == 1)
        #expect(publisher.publish(self.table(replicas: 2), settings: self.settings, madeAtUnixMs: 2) == nil)
        let secondMade = publisher.publish(self.table(replicas: 3), settings: self.settings, madeAtUnixMs: 3)
        let second = try #require(secondMade)
        #expect(second.update.baseSequence == 1 && second.update.sequence == 2)
        #expect(second.update.applications.first?.deployments.first?.replicas.map(\.replicaID) == ["D#2"])
        #expect(second.update.madeAtUnixMs == 3)
        // A node that registers now gets the whole of table 2, which the next change is from.
        let wholeMade = publisher.wholeTable()
        let whole = try #require(wholeMade)
        #expect(whole.sequence == 2 && whole.baseSequence == 0 && whole.applications.first?.deployments.first?.replicas.count == 3)
        var mirror = RouteTableMirror()
        #expect(try mirror.apply(whole))
        let thirdMade = publisher.publish(self.table(replicas: 1), settings: self.settings, madeAtUnixMs: 4)
        let third = try #require(thirdMade)
        #expect(try mirror.apply(third.update))
        #expect(mirror.table == self.table(replicas: 1))
    }

    @Test("a change of where proxies run or what they bind is a new table, with the same routes")
    func settingsChange() throws {
        var publisher = RoutePublisher(epoch: 1)
        _ = publisher.publish(self.table(replicas: 1), settings: self.settings, madeAtUnixMs: 0)
        var moved = self.settings
        moved.httpPort = 9000
        let updateMade = publisher.publish(self.table(replicas: 1), settings: moved, madeAtUnixMs: 0)
        let update = try #require(updateMade).update
        #expect(update.httpPort == 9000 && update.baseSequence == 1 && update.applications.isEmpty)
    }
}
