// Usage: node score.js HOST:PORT < request.json  ->  prints the ScoreResponse (or the error) as JSON.
// The request is a ScoreRequest in proto3 JSON form with camelCase field names.
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const definition = protoLoader.loadSync("scoregraph/gateway/v1/gateway.proto", {
  includeDirs: [path.resolve(__dirname, "../../../protos")],
  keepCase: false,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
});
const { GatewayService } = grpc.loadPackageDefinition(definition).scoregraph.gateway.v1;

const client = new GatewayService(process.argv[2], grpc.credentials.createInsecure());
const request = JSON.parse(require("fs").readFileSync(0, "utf8"));
const createdAt = new Date(request.transaction.createdAt);
request.transaction.createdAt = { seconds: Math.floor(createdAt / 1000), nanos: (createdAt % 1000) * 1e6 };

client.Score(request, { deadline: Date.now() + 5000 }, (error, response) => {
  if (error) {
    console.log(JSON.stringify({ error: { code: grpc.status[error.code], details: error.details } }));
  } else {
    console.log(JSON.stringify({ response }));
  }
  client.close();
});
