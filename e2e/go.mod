module github.com/gantry-ml/gantry/e2e

go 1.26.8

require (
	github.com/chromedp/cdproto v0.159.0
	github.com/chromedp/chromedp v0.23.0
	github.com/gantry-ml/gantry v0.0.0-00010101000000-000000000000
	github.com/gorilla/websocket v1.5.3
	go.yaml.in/yaml/v3 v3.0.6
)

require (
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

replace github.com/gantry-ml/gantry => ../
