package main

// Chosen CloneVM_Task faults: rules that make the clones they match fail with a fault of the
// test's choosing, as a real vCenter reports it (the task ends in error, with the fault and a
// localizedMessage).
//
// Control API additions (registered by registerCloneFaults):
//
//	GET    /faults/clone  -> {"rules": [rule...]}, each with "id" and "raised" (times it fired)
//	POST   /faults/clone  {"fault": kind, "name": glob, "snapshot": name or moref,
//	                      "times": n, "leave_vm": bool, "message": "..."} -> the rule with its id
//	DELETE /faults/clone  forget every rule
//
//	fault     DuplicateName | InvalidDatastore | VmConfigFault | CustomizationFault |
//	          Transient (a SystemError) | SystemError | HostCommunication |
//	          InaccessibleDatastore | InsufficientResources | TaskInProgress | NoPermission
//	name      a path.Match glob on the clone's name ("lab-0*"); empty: every name
//	snapshot  the clone spec's snapshot, by name ("v2") or moref; empty: any (or none)
//	times     how many matching clones fail: 1 (the default) = the first only, 0 = always
//	leave_vm  the VM is made before the task fails (a half-finished clone vCenter leaves behind)
//	message   the fault's message (default: one naming the fault and the harness)
//
// Rules are matched in the order they were added, when the CloneVM_Task arrives (so "the first
// clone from snapshot B" is the first to arrive); the first matching rule with tries left
// fires. The task fails after the clone delay, like the random injected failures.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

type cloneFaultRule struct {
	ID       int64  `json:"id"`
	Fault    string `json:"fault"`
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
	Times    int64  `json:"times"`
	LeaveVM  bool   `json:"leave_vm"`
	Message  string `json:"message"`
	Raised   int64  `json:"raised"`
}

type cloneFaultRules struct {
	mu     sync.Mutex
	nextID int64
	rules  []*cloneFaultRule
}

var cloneFaults = &cloneFaultRules{nextID: 1}

var cloneFaultKinds = map[string]bool{
	"DuplicateName": true, "InvalidDatastore": true, "VmConfigFault": true,
	"CustomizationFault": true, "Transient": true, "SystemError": true,
	"HostCommunication": true, "InaccessibleDatastore": true, "InsufficientResources": true,
	"TaskInProgress": true, "NoPermission": true,
}

// chosenCloneFault is the fault a rule picked for one clone, decided when the request arrived.
type chosenCloneFault struct {
	fault   types.BaseMethodFault
	leaveVM bool
}

// snapshotName is the name of snapshot ref in vm's snapshot tree ("" if not found).
func snapshotName(vm types.ManagedObjectReference, ref types.ManagedObjectReference) string {
	v, ok := simulator.Map.Get(vm).(*simulator.VirtualMachine)
	if !ok {
		return ""
	}
	var name string
	var walk func([]types.VirtualMachineSnapshotTree)
	walk = func(trees []types.VirtualMachineSnapshotTree) {
		for _, t := range trees {
			if t.Snapshot == ref {
				name = t.Name
				return
			}
			walk(t.ChildSnapshotList)
		}
	}
	simulator.Map.WithLock(v, func() {
		if v.Snapshot != nil {
			walk(v.Snapshot.RootSnapshotList)
		}
	})
	return name
}

// chooseCloneFault returns the fault a newly arrived clone request must fail with, if a rule
// matches it, and counts the rule as fired.
func chooseCloneFault(req *types.CloneVM_Task) *chosenCloneFault {
	snapMoref, snapName := "", ""
	if req.Spec.Snapshot != nil {
		snapMoref = req.Spec.Snapshot.Value
		snapName = snapshotName(req.This, *req.Spec.Snapshot)
	}
	cloneFaults.mu.Lock()
	defer cloneFaults.mu.Unlock()
	for _, r := range cloneFaults.rules {
		if r.Times > 0 && r.Raised >= r.Times {
			continue
		}
		if r.Name != "" {
			if ok, _ := path.Match(r.Name, req.Name); !ok {
				continue
			}
		}
		if r.Snapshot != "" && r.Snapshot != snapMoref && r.Snapshot != snapName {
			continue
		}
		r.Raised++
		return &chosenCloneFault{fault: makeCloneFault(r, req), leaveVM: r.LeaveVM}
	}
	return nil
}

func makeCloneFault(r *cloneFaultRule, req *types.CloneVM_Task) types.BaseMethodFault {
	msg := r.Message
	if msg == "" {
		msg = fmt.Sprintf("%s for clone %q (injected by deskpool-vcsim)", r.Fault, req.Name)
	}
	base := types.MethodFault{FaultMessage: []types.LocalizableMessage{{
		Key: "com.vmware.vim.vpxd.vmprov.injected", Message: msg,
	}}}
	vim := types.VimFault{MethodFault: base}
	ds := req.Spec.Location.Datastore
	switch r.Fault {
	case "DuplicateName":
		return &types.DuplicateName{VimFault: vim, Name: req.Name, Object: req.Folder}
	case "InvalidDatastore":
		return &types.InvalidDatastore{VimFault: vim, Datastore: ds, Name: "LocalDS_0"}
	case "VmConfigFault":
		return &types.VmConfigFault{VimFault: vim}
	case "CustomizationFault":
		return &types.CustomizationFault{VimFault: vim}
	case "HostCommunication":
		return &types.HostCommunication{RuntimeFault: types.RuntimeFault{MethodFault: base}}
	case "InaccessibleDatastore":
		return &types.InaccessibleDatastore{InvalidDatastore: types.InvalidDatastore{VimFault: vim, Datastore: ds, Name: "LocalDS_0"}}
	case "InsufficientResources":
		return &types.InsufficientResourcesFault{VimFault: vim}
	case "TaskInProgress":
		return &types.TaskInProgress{VimFault: vim, Task: req.This}
	case "NoPermission":
		return &types.NoPermission{SecurityError: types.SecurityError{RuntimeFault: types.RuntimeFault{MethodFault: base}},
			Object: req.Folder, PrivilegeId: "VirtualMachine.Provisioning.Clone"}
	default: // Transient, SystemError
		return &types.SystemError{RuntimeFault: types.RuntimeFault{MethodFault: base}, Reason: msg}
	}
}

// runTask runs a task as simulator.Task.Run does, but reports a failure's localizedMessage as
// vCenter does (the fault's message) instead of the Go type name.
func runTask(t *simulator.Task) {
	simulator.Map.Update(t, []types.PropertyChange{
		{Name: "info.startTime", Val: time.Now()},
		{Name: "info.state", Val: types.TaskInfoStateRunning},
	})
	res, err := t.Execute(t)
	state := types.TaskInfoStateSuccess
	var fault interface{}
	if err != nil {
		state = types.TaskInfoStateError
		msg := fmt.Sprintf("%T", err)
		if m := err.GetMethodFault(); m != nil && len(m.FaultMessage) > 0 && m.FaultMessage[0].Message != "" {
			msg = m.FaultMessage[0].Message
		}
		fault = types.LocalizedMethodFault{Fault: err, LocalizedMessage: msg}
	}
	simulator.Map.Update(t, []types.PropertyChange{
		{Name: "info.completeTime", Val: time.Now()},
		{Name: "info.state", Val: state},
		{Name: "info.result", Val: res},
		{Name: "info.error", Val: fault},
	})
}

func (h *harness) registerCloneFaults(mux *http.ServeMux) {
	mux.HandleFunc("/faults/clone", h.handleCloneFaults)
}

func (h *harness) handleCloneFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet:
	case http.MethodDelete:
		cloneFaults.mu.Lock()
		cloneFaults.rules = nil
		cloneFaults.mu.Unlock()
	case http.MethodPost:
		in := cloneFaultRule{Times: 1}
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf(`body must be {"fault":"...","name":"glob","snapshot":"...","times":n,"leave_vm":bool,"message":"..."}: %v`, err))
			return
		}
		if !cloneFaultKinds[in.Fault] {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("unknown fault %q", in.Fault))
			return
		}
		if _, err := path.Match(in.Name, ""); err != nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("name %q: %v", in.Name, err))
			return
		}
		if in.Times < 0 {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("times must be 0 (always) or more"))
			return
		}
		cloneFaults.mu.Lock()
		in.ID = cloneFaults.nextID
		in.Raised = 0
		cloneFaults.nextID++
		rule := in
		cloneFaults.rules = append(cloneFaults.rules, &rule)
		cloneFaults.mu.Unlock()
		writeJSON(w, http.StatusOK, rule)
		return
	default:
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use GET, POST or DELETE"})
		return
	}
	cloneFaults.mu.Lock()
	out := []cloneFaultRule{}
	for _, r := range cloneFaults.rules {
		out = append(out, *r)
	}
	cloneFaults.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]interface{}{"rules": out})
}
