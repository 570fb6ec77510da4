import Foundation
import ServeHead

extension HeadOptions {
    /// A head for a test that runs it in process: every port on loopback and picked by the
    /// system, the state dir `state`, the token given.
    static func loopback(state: URL, token: String) -> HeadOptions {
        var options = HeadOptions(stateDirectory: state)
        options.clusterHost = "127.0.0.1"
        options.clusterPort = 0
        options.httpHost = "127.0.0.1"
        options.httpPort = 0
        options.adminPort = 0
        options.token = token
        return options
    }
}
