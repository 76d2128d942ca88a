package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"sync"
	"time"
	"unsafe"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

// Control API (JSON over HTTP, on -control-listen):
//
//	GET  /stats            counters: soap_calls{method:n}, soap_calls_total, clone_requests,
//	                       non_linked_clones, clones_succeeded, clones_failed,
//	                       injected_clone_failures, duplicate_name_errors, clones_in_flight,
//	                       max_clones_in_flight, clones_in_flight_by_folder,
//	                       max_clones_in_flight_by_folder, vm_count, config
//	POST /stats/reset      zero counters and maxima, forget the clone timeline
//	GET  /clones           every CloneVM_Task since the last reset, in arrival order:
//	                       [{name,folder,received_us,done_us,ok,power_on}] (Unix microseconds;
//	                       done_us 0 while running)
//	POST /sessions/expire  terminate all SOAP sessions ({"expired":n})
//	GET|POST /config       {"clone_delay_ms","power_delay_ms","clone_fail_rate","fail_leave_vm_rate"} (any subset)
//	POST /password         {"password":"new"}: later Logins need it (a rotated password);
//	                       sessions already open stay valid
//	POST /snapshots/remove remove all snapshots of the golden VM
//	POST /folders          {"name":"pool-a"} -> {"moref","created","path"} (DC0/vm/NAME, idempotent)
//	GET  /session-objects  {"PropertyCollector":n,"ContainerView":n,"ListView":n,...}: objects
//	                       that live in SOAP sessions (made by CreatePropertyCollector,
//	                       CreateContainerView, CreateListView), counted over every session
//	POST /vms/inaccessible {"moref":"vm-1","inaccessible":true}: the VM's datastore "goes
//	                       away" as vCenter shows it: runtime.connectionState = inaccessible
//	                       and config unset, so reads of config.* answer with a missingSet;
//	                       false restores the config and connectionState = connected
//	POST /clusters/drs     {"cluster":"DC0_C0","enabled":false}: DRS off; clones into the
//	                       cluster then fail with InvalidArgument unless
//	                       spec.location.host is set, as on vCenter
//	POST /hosts/state      {"host":"DC0_C0_H1","memory_mb":n,"maintenance":bool,
//	                       "connected":bool} (any subset): summary.quickStats.
//	                       overallMemoryUsage, runtime.inMaintenanceMode, connectionState
//	GET  /vms[?folder=X]   [{name,moref,power_state,instance_uuid,extra_config,folder,folder_moref,
//	                       snapshots,current_snapshot,tools_running_status,ip_address}]
//	                       (X = folder name or moref)
//	POST /vms/copy, GET|POST /faults: see copies.go
//	GET|POST /guest: see guest.go
func (h *harness) controlMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", h.only(http.MethodGet, h.handleStats))
	mux.HandleFunc("/stats/reset", h.only(http.MethodPost, h.handleResetStats))
	mux.HandleFunc("/clones", h.only(http.MethodGet, h.handleClones))
	mux.HandleFunc("/sessions/expire", h.only(http.MethodPost, h.handleExpireSessions))
	mux.HandleFunc("/config", h.handleConfig)
	mux.HandleFunc("/password", h.only(http.MethodPost, h.handleSetPassword))
	mux.HandleFunc("/snapshots/remove", h.only(http.MethodPost, h.handleRemoveSnapshots))
	mux.HandleFunc("/folders", h.only(http.MethodPost, h.handleCreateFolder))
	mux.HandleFunc("/session-objects", h.only(http.MethodGet, h.handleSessionObjects))
	mux.HandleFunc("/vms/inaccessible", h.only(http.MethodPost, h.handleInaccessible))
	mux.HandleFunc("/clusters/drs", h.only(http.MethodPost, h.handleClusterDrs))
	mux.HandleFunc("/hosts/state", h.only(http.MethodPost, h.handleHostState))
	mux.HandleFunc("/vms", h.only(http.MethodGet, h.handleVMs))
	h.registerSafety(mux)
	h.registerGuest(mux)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]bool{"ok": true}) })
	return mux
}

func (h *harness) only(method string, f http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use " + method})
			return
		}
		f(w, r)
	}
}

func writeJSON(w http.ResponseWriter, code int, v interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (h *harness) handleStats(w http.ResponseWriter, _ *http.Request) {
	vmCount := len(simulator.Map.All("VirtualMachine"))
	h.mu.Lock()
	st := h.stats
	calls := make(map[string]int64, len(st.soapCalls))
	for k, v := range st.soapCalls {
		calls[k] = v
	}
	maxBy := map[string]int64{}
	for k, v := range st.maxInFlightByFoler {
		maxBy[k] = v
	}
	curBy := map[string]int64{}
	for k, v := range st.inFlightByFolder {
		if v != 0 {
			curBy[k] = v
		}
	}
	cfg := h.cfg
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"soap_calls":                     calls,
		"soap_calls_total":               st.soapTotal,
		"clone_requests":                 st.cloneRequests,
		"non_linked_clones":              st.nonLinked,
		"clones_succeeded":               st.clonesOK,
		"clones_failed":                  st.clonesFailed,
		"injected_clone_failures":        st.injectedFailures,
		"duplicate_name_errors":          st.duplicateNames,
		"clones_in_flight":               st.inFlight,
		"max_clones_in_flight":           st.maxInFlight,
		"clones_in_flight_by_folder":     curBy,
		"max_clones_in_flight_by_folder": maxBy,
		"vm_count":                       vmCount,
		"config": map[string]interface{}{
			"clone_delay_ms":     cfg.cloneDelay.Milliseconds(),
			"power_delay_ms":     cfg.powerDelay.Milliseconds(),
			"clone_fail_rate":    cfg.failRate,
			"fail_leave_vm_rate": cfg.leaveVMRate,
		},
	})
}

// handleResetStats zeroes counters and maxima. Clones still in flight stay
// counted as in flight (and become the new maxima).
func (h *harness) handleResetStats(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	old := h.stats
	h.stats = newCounters()
	h.clones = nil
	h.clonesGen++
	h.stats.inFlight = old.inFlight
	h.stats.maxInFlight = old.inFlight
	for k, v := range old.inFlightByFolder {
		if v != 0 {
			h.stats.inFlightByFolder[k] = v
			h.stats.maxInFlightByFoler[k] = v
		}
	}
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (h *harness) handleClones(w http.ResponseWriter, _ *http.Request) {
	h.mu.Lock()
	out := append([]cloneRecord{}, h.clones...)
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// handleExpireSessions terminates every session known to the SessionManager:
// the next call with an old cookie gets NotAuthenticated.
func (h *harness) handleExpireSessions(w http.ResponseWriter, _ *http.Request) {
	sm := simulator.Map.SessionManager()
	// A Session's Get on the SessionManager returns a copy with SessionList
	// filled from the private session map (under the simulator's mutex).
	probe := &simulator.Session{UserSession: types.UserSession{Key: "deskpool-vcsim-control"}, Registry: simulator.NewRegistry()}
	view, ok := probe.Get(sm.Reference()).(*simulator.SessionManager)
	if !ok {
		writeErr(w, http.StatusInternalServerError, fmt.Errorf("cannot list sessions"))
		return
	}
	ctx := &simulator.Context{Context: context.Background(), Map: simulator.Map, Session: probe}
	n := 0
	for _, s := range view.SessionList {
		res := sm.TerminateSession(ctx, &types.TerminateSession{This: sm.Reference(), SessionId: []string{s.Key}})
		if res.Fault() == nil {
			n++
		}
	}
	writeJSON(w, http.StatusOK, map[string]int{"expired": n})
}

func (h *harness) handleConfig(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		var in struct {
			CloneDelayMs    *int64   `json:"clone_delay_ms"`
			PowerDelayMs    *int64   `json:"power_delay_ms"`
			CloneFailRate   *float64 `json:"clone_fail_rate"`
			FailLeaveVMRate *float64 `json:"fail_leave_vm_rate"`
		}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		h.mu.Lock()
		if in.CloneDelayMs != nil {
			h.cfg.cloneDelay = time.Duration(*in.CloneDelayMs) * time.Millisecond
		}
		if in.PowerDelayMs != nil {
			h.cfg.powerDelay = time.Duration(*in.PowerDelayMs) * time.Millisecond
		}
		if in.CloneFailRate != nil {
			h.cfg.failRate = *in.CloneFailRate
		}
		if in.FailLeaveVMRate != nil {
			h.cfg.leaveVMRate = *in.FailLeaveVMRate
		}
		h.mu.Unlock()
	} else if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET or POST"})
		return
	}
	h.mu.Lock()
	cfg := h.cfg
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]interface{}{
		"clone_delay_ms":     cfg.cloneDelay.Milliseconds(),
		"power_delay_ms":     cfg.powerDelay.Milliseconds(),
		"clone_fail_rate":    cfg.failRate,
		"fail_leave_vm_rate": cfg.leaveVMRate,
	})
}

// handleSetPassword changes the password the simulator's Login accepts (it reads
// Service.Listen.User on every Login).
func (h *harness) handleSetPassword(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Password string `json:"password"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Password == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("body must be {\"password\":\"...\"}"))
		return
	}
	h.mu.Lock()
	h.setPassword(in.Password)
	h.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (h *harness) handleRemoveSnapshots(w http.ResponseWriter, r *http.Request) {
	res, err := methods.RemoveAllSnapshots_Task(r.Context(), h.client, &types.RemoveAllSnapshots_Task{This: h.golden})
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	if _, f := innerTaskResult(res.Returnval); f != nil {
		writeErr(w, http.StatusInternalServerError, fmt.Errorf("RemoveAllSnapshots: %T", f))
		return
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (h *harness) handleCreateFolder(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Name == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("body must be {\"name\":\"...\"}"))
		return
	}
	ref, created, err := h.createFolder(r.Context(), in.Name)
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]interface{}{"moref": ref.Value, "created": created, "path": "DC0/vm/" + in.Name})
}

type vmInfo struct {
	Name         string            `json:"name"`
	Moref        string            `json:"moref"`
	PowerState   string            `json:"power_state"`
	InstanceUUID string            `json:"instance_uuid"`
	ExtraConfig  map[string]string `json:"extra_config"`
	Folder       string            `json:"folder"`
	FolderMoref  string            `json:"folder_moref"`
	Snapshots    int               `json:"snapshots"`
	// CurrentSnapshot is the moref of snapshot.currentSnapshot ("" if none).
	CurrentSnapshot string `json:"current_snapshot"`
	// ToolsRunningStatus and IPAddress are guest.toolsRunningStatus and guest.ipAddress.
	ToolsRunningStatus string `json:"tools_running_status"`
	IPAddress          string `json:"ip_address"`
}

// handleVMs lists VMs, optionally only those whose parent folder has the
// given name or moref.
func (h *harness) handleVMs(w http.ResponseWriter, r *http.Request) {
	want := r.URL.Query().Get("folder")
	out := []vmInfo{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm, ok := e.(*simulator.VirtualMachine)
		if !ok {
			continue
		}
		var info vmInfo
		var parent types.ManagedObjectReference
		simulator.Map.WithLock(vm, func() {
			info = vmInfo{Name: vm.Name, Moref: vm.Self.Value, PowerState: string(vm.Runtime.PowerState), ExtraConfig: map[string]string{}}
			if vm.Config != nil {
				info.InstanceUUID = vm.Config.InstanceUuid
				for _, o := range vm.Config.ExtraConfig {
					v := o.GetOptionValue()
					info.ExtraConfig[v.Key] = fmt.Sprint(v.Value)
				}
			}
			if vm.Snapshot != nil {
				info.Snapshots = countSnapshots(vm.Snapshot.RootSnapshotList)
				if vm.Snapshot.CurrentSnapshot != nil {
					info.CurrentSnapshot = vm.Snapshot.CurrentSnapshot.Value
				}
			}
			if vm.Parent != nil {
				parent = *vm.Parent
			}
			if vm.Guest != nil {
				info.ToolsRunningStatus = vm.Guest.ToolsRunningStatus
				info.IPAddress = vm.Guest.IpAddress
			}
		})
		if info.Name == "" {
			continue // still being created by the simulator
		}
		info.FolderMoref = parent.Value
		info.Folder = entityName(parent)
		if want != "" && want != info.Folder && want != info.FolderMoref {
			continue
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func countSnapshots(l []types.VirtualMachineSnapshotTree) int {
	n := 0
	for _, s := range l {
		n += 1 + countSnapshots(s.ChildSnapshotList)
	}
	return n
}

// handleSessionObjects counts the objects kept in each session's own registry. govmomi
// 0.24.2 exposes neither the session map nor a registry's objects, so this reads them with
// reflection (test harness only), taking each registry's lock as Registry.All does.
func (h *harness) handleSessionObjects(w http.ResponseWriter, _ *http.Request) {
	counts := map[string]int{}
	sessions := reflect.ValueOf(simulator.Map.SessionManager()).Elem().FieldByName("sessions")
	for _, key := range sessions.MapKeys() {
		reg := sessions.MapIndex(key).FieldByName("Registry")
		if reg.IsNil() {
			continue
		}
		r := reg.Elem()
		mu := (*sync.Mutex)(unsafe.Pointer(r.FieldByName("m").UnsafeAddr()))
		mu.Lock()
		for _, ref := range r.FieldByName("objects").MapKeys() {
			counts[ref.FieldByName("Type").String()]++
		}
		mu.Unlock()
	}
	writeJSON(w, http.StatusOK, counts)
}

func (h *harness) handleInaccessible(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Moref        string `json:"moref"`
		Inaccessible bool   `json:"inaccessible"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Moref == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("body must be {\"moref\":\"vm-N\",\"inaccessible\":true|false}"))
		return
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: in.Moref}
	vm, ok := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no VM %s", in.Moref))
		return
	}
	state := types.VirtualMachineConnectionStateConnected
	h.mu.Lock()
	if in.Inaccessible {
		state = types.VirtualMachineConnectionStateInaccessible
		simulator.Map.WithLock(vm, func() {
			if vm.Config != nil {
				h.hiddenConfig[ref] = vm.Config
				vm.Config = nil
			}
		})
	} else if cfg, ok := h.hiddenConfig[ref]; ok {
		delete(h.hiddenConfig, ref)
		simulator.Map.WithLock(vm, func() { vm.Config = cfg })
	}
	h.mu.Unlock()
	// Through the registry so property collectors (WaitForUpdatesEx) see the change.
	simulator.Map.Update(vm, []types.PropertyChange{{Name: "runtime.connectionState", Val: state}})
	writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

func (h *harness) handleClusterDrs(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Cluster string `json:"cluster"`
		Enabled bool   `json:"enabled"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Cluster == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("body must be {\"cluster\":\"NAME\",\"enabled\":bool}"))
		return
	}
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		c := e.(*simulator.ClusterComputeResource)
		if c.Name != in.Cluster {
			continue
		}
		simulator.Map.WithLock(c, func() {
			if cfg, ok := c.ConfigurationEx.(*types.ClusterConfigInfoEx); ok {
				cfg.DrsConfig.Enabled = types.NewBool(in.Enabled)
			}
		})
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return
	}
	writeErr(w, http.StatusNotFound, fmt.Errorf("no cluster %q", in.Cluster))
}

func (h *harness) handleHostState(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Host        string `json:"host"`
		MemoryMB    *int32 `json:"memory_mb"`
		Maintenance *bool  `json:"maintenance"`
		Connected   *bool  `json:"connected"`
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Host == "" {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("body must be {\"host\":\"NAME\",...}"))
		return
	}
	for _, e := range simulator.Map.All("HostSystem") {
		host := e.(*simulator.HostSystem)
		if host.Name != in.Host {
			continue
		}
		simulator.Map.WithLock(host, func() {
			if in.MemoryMB != nil {
				host.Summary.QuickStats.OverallMemoryUsage = *in.MemoryMB
			}
			if in.Maintenance != nil {
				host.Runtime.InMaintenanceMode = *in.Maintenance
			}
			if in.Connected != nil {
				host.Runtime.ConnectionState = types.HostSystemConnectionStateConnected
				if !*in.Connected {
					host.Runtime.ConnectionState = types.HostSystemConnectionStateDisconnected
				}
			}
		})
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
		return
	}
	writeErr(w, http.StatusNotFound, fmt.Errorf("no host %q", in.Host))
}

// needsHost: the clone's resource pool belongs to a cluster with DRS off and the spec names
// no host, which vCenter refuses.
func needsHost(spec *types.VirtualMachineCloneSpec) bool {
	if spec.Location.Host != nil || spec.Location.Pool == nil {
		return false
	}
	rp, ok := simulator.Map.Get(*spec.Location.Pool).(*simulator.ResourcePool)
	if !ok {
		return false
	}
	var owner types.ManagedObjectReference
	simulator.Map.WithLock(rp, func() { owner = rp.Owner })
	c, ok := simulator.Map.Get(owner).(*simulator.ClusterComputeResource)
	if !ok {
		return false
	}
	off := false
	simulator.Map.WithLock(c, func() {
		if cfg, ok := c.ConfigurationEx.(*types.ClusterConfigInfoEx); ok {
			off = !isTrue(cfg.DrsConfig.Enabled)
		}
	})
	return off
}

func isTrue(b *bool) bool { return b != nil && *b }
