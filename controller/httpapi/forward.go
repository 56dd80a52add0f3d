package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sort"
	"sync"
	"time"

	"github.com/gantry-ml/gantry/controller/apiv1"
	"github.com/gantry-ml/gantry/controller/view"
)

// headerForwarded marks a request a follower passed to the leader, so a
// stale view of leadership can never bounce a request around the cluster.
const headerForwarded = "X-Gantry-Forwarded-By"

// forwardToLeader wraps a write handler: on a follower the request is
// proxied to the leader (waiting a bounded time while an election runs);
// on the leader it is handled here.
func (a *API) forwardToLeader(h http.HandlerFunc) http.HandlerFunc {
	if a.opts.Leader == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		leader, err := a.opts.Leader(r.Context())
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		if leader == "" {
			h(w, r)
			return
		}
		if r.Header.Get(headerForwarded) != "" {
			writeError(w, http.StatusServiceUnavailable, fmt.Errorf("forwarded request reached a follower (leader is %s); retry", leader))
			return
		}
		a.proxy(w, r, leader)
	}
}

// consistent serves a read locally unless ?consistent=1 asks for the
// leader's view: then a follower proxies it and the leader confirms its
// leadership with a quorum before reading.
func (a *API) consistent(h http.HandlerFunc) http.HandlerFunc {
	if a.opts.Leader == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("consistent") == "" {
			h(w, r)
			return
		}
		a.forwardToLeader(func(w http.ResponseWriter, r *http.Request) {
			if a.opts.VerifyLeader != nil {
				if err := a.opts.VerifyLeader(); err != nil {
					writeError(w, http.StatusServiceUnavailable, err)
					return
				}
			}
			h(w, r)
		})(w, r)
	}
}

func (a *API) proxy(w http.ResponseWriter, r *http.Request, leader string) {
	target := &url.URL{Scheme: a.peerScheme(), Host: leader}
	rp := &httputil.ReverseProxy{
		Transport: a.peerTransport(),
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// SetURL addresses the leader by its advertised HTTP address,
			// which the leader always answers to; the client's Host names
			// this follower and may not be allowed on the leader. The
			// Authorization header travels unchanged, so a token cluster
			// checks the caller's token, not a forwarding privilege.
			pr.Out.Header.Set(headerForwarded, a.opts.NodeID)
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			writeError(w, http.StatusBadGateway, fmt.Errorf("forwarding to the leader at %s: %w", leader, err))
		},
	}
	rp.ServeHTTP(w, r)
}

// clusterRoute serves GET /v1/cluster. The token guards the cluster view,
// which asks every peer; a peer's own status (?local=1: its Raft state and
// indexes, as much as /metrics shows) needs none. So a controller asking
// its peers never sends them the token: their addresses come from gossip,
// and whoever holds the gossip key could advertise one of its own.
func (a *API) clusterRoute() http.HandlerFunc {
	withAuth := a.auth(a.clusterStatus)
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("local") != "" {
			a.clusterStatus(w, r)
			return
		}
		withAuth(w, r)
	}
}

// clusterStatus answers GET /v1/cluster: this node's Raft view, with each
// peer's own applied index and last contact asked over HTTP (?local=1).
func (a *API) clusterStatus(w http.ResponseWriter, r *http.Request) {
	raw, err := a.opts.Raft.Status(a.opts.Applied())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	st := view.Cluster(raw)
	st.LastContactMs = a.lastContactMs()
	if r.URL.Query().Get("local") != "" || a.opts.Peers == nil {
		writeJSON(w, http.StatusOK, st)
		return
	}
	addrs := a.opts.Peers()
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range st.Peers {
		p := &st.Peers[i]
		if p.ID == st.NodeID {
			p.AppliedIndex, p.LastContactMs, p.Reachable = st.AppliedIndex, st.LastContactMs, true
			continue
		}
		addr, ok := addrs[p.ID]
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			peer, err := a.fetchLocalStatus(ctx, addr)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.Error = err.Error()
				return
			}
			p.AppliedIndex, p.LastContactMs, p.Reachable = peer.AppliedIndex, peer.LastContactMs, true
		}()
	}
	wg.Wait()
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].ID < st.Peers[j].ID })
	writeJSON(w, http.StatusOK, st)
}

func (a *API) lastContactMs() int64 {
	if a.opts.LastContact == nil {
		return 0
	}
	t := a.opts.LastContact()
	if t.IsZero() {
		return 0
	}
	return time.Since(t).Milliseconds()
}

func (a *API) fetchLocalStatus(ctx context.Context, addr string) (apiv1.Cluster, error) {
	var out apiv1.Cluster
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.peerScheme()+"://"+addr+"/v1/cluster?local=1", nil)
	if err != nil {
		return out, err
	}
	resp, err := a.peerTransport().RoundTrip(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return out, err
	}
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return out, errors.New("peer answered with invalid JSON")
	}
	return out, nil
}
