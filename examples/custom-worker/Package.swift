// swift-tools-version: 6.0
// A worker binary with its own Swift deployments: link swift-serve's `Serve` (the deployment
// API) and `ServeWorker` (the worker runtime), register deployments, run the stock worker CLI.
import PackageDescription

let package = Package(
    name: "custom-worker",
    platforms: [.macOS(.v14)],
    dependencies: [.package(name: "swift-serve", path: "../..")],
    targets: [
        .executableTarget(
            name: "my-worker",
            dependencies: [
                .product(name: "Serve", package: "swift-serve"),
                .product(name: "ServeWorker", package: "swift-serve"),
            ]
        )
    ]
)
